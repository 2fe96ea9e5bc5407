"""Checkpoints written atomically, with a manifest of sha256 digests written last.

Layout of one checkpoint (``output_dir/checkpoints/step-000010/``):
  model/               the policy as a Hugging Face directory (with LoRA: the adapter; ``merged/`` on request)
  value_model/         PPO's critic: value_head.safetensors + its backbone directory (with LoRA: its adapter;
                       a shared critic: the head only)
  optimizer.pt         optimizer and scheduler state (tensors and numbers only: loaded with weights_only=True)
  optimizer/           instead, under resources.strategy fsdp: rank-RRRRR-of-WWWWW.pt, each rank's shard of
                       the optimizer state (same format), for an exact resume at the same world size
  trainer_state.json   step, data cursor, KL controller, running reward statistics, RNG states
  manifest.json        {"step", "files": [{"path", "sha256", "size"}]} — written last

A directory is renamed into place only once complete, so a crash leaves either the old set or a stray
``.tmp-*`` directory that is ignored and cleaned up. Resume takes the newest directory whose manifest
verifies.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlcore.errors import ErrorCode, RLFTError
from rlcore.layout import STEP_PREFIX, checkpoint_root, step_dir_name, step_of

MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_manifest(directory: Path, step: int) -> dict[str, Any]:
    files = []
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            files.append(
                {
                    "path": p.relative_to(directory).as_posix(),
                    "sha256": sha256_file(p),
                    "size": p.stat().st_size,
                }
            )
    return {"step": step, "files": files}


def manifest_digest(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    output_dir: str | os.PathLike, step: int, write: Callable[[Path], None], keep: int | None = None
) -> tuple[Path, dict[str, Any]]:
    """Call ``write(tmp_dir)`` to fill a checkpoint, then seal it with a manifest and rename it into place."""
    root = checkpoint_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{step_dir_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    write(tmp)
    manifest = build_manifest(tmp, step)
    with (tmp / MANIFEST).open("w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    final = root / step_dir_name(step)
    if final.exists():  # a replayed step after a resume: the new one replaces it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    if keep is not None:
        prune(output_dir, keep)
    return final, manifest


def verify(directory: Path) -> dict[str, Any] | None:
    """The manifest if every file it lists is present with its digest, else None."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        for entry in manifest["files"]:
            p = directory / entry["path"]
            if not p.is_file() or p.stat().st_size != entry["size"] or sha256_file(p) != entry["sha256"]:
                return None
        return manifest
    except (OSError, ValueError, KeyError, TypeError):
        return None


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint directories, newest step first (unverified)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX)]
    return sorted(dirs, key=lambda p: step_of(p.name), reverse=True)


def find_resume(output_dir: str | os.PathLike, resume: bool | str | os.PathLike | None):
    """Where a run resumes from: ``(checkpoint or None, newer checkpoints that did not verify)``.

    ``resume`` is False/None (start afresh), True (the newest valid checkpoint in ``output_dir``) or a
    checkpoint directory, which must verify."""
    if resume is False or resume is None:
        return None, []
    if resume is not True:
        path = Path(resume)
        if verify(path) is None:
            raise RLFTError(
                f"checkpoint {path} does not verify against its manifest", code=ErrorCode.CHECKPOINT_INVALID
            )
        return path, []
    return latest_valid(output_dir)


def latest_valid(output_dir: str | os.PathLike) -> tuple[Path | None, list[Path]]:
    """The newest checkpoint that verifies, and the newer ones that did not (to report)."""
    broken = []
    for d in list_checkpoints(output_dir):
        if verify(d) is not None:
            return d, broken
        broken.append(d)
    return None, broken


def prune(output_dir: str | os.PathLike, keep: int) -> None:
    for d in list_checkpoints(output_dir)[keep:]:
        shutil.rmtree(d, ignore_errors=True)
    for d in checkpoint_root(output_dir).glob(".tmp-*"):
        shutil.rmtree(d, ignore_errors=True)


# ---- a trainer's checkpoint: what it writes, what a resume reads back -------------------------------------

OPTIMIZER_FILE = "optimizer.pt"


def write_training_state(
    directory: Path,
    *,
    policy,
    tokenizer,
    value_model,
    optimizer,
    scheduler,
    state,
    merge_lora: bool = False,
    policy_state: dict | None = None,
    value_state: dict | None = None,
) -> None:
    """Fill ``directory`` with the layout of the module docstring (everything but the manifest).

    ``policy`` and ``value_model`` are unwrapped (not the data-parallel wrappers); ``state`` is the
    ``TrainerState`` to resume from. Sharded models (``resources.strategy: fsdp``) come with their gathered
    ``policy_state`` / ``value_state`` and no ``optimizer`` (each rank writes its own shard, see
    ``rlcore.distributed``)."""
    import torch

    policy.save_pretrained(directory / "model", safe_serialization=True, state_dict=policy_state)
    tokenizer.save_pretrained(directory / "model")
    if merge_lora:  # a plain model beside the adapter, for tools that do not read adapters
        merged = _merged(policy, directory / "model", sharded=policy_state is not None)
        merged.save_pretrained(directory / "merged", safe_serialization=True)
        tokenizer.save_pretrained(directory / "merged")
    if value_model is not None:
        value_model.save(directory / "value_model", state_dict=value_state)
    if optimizer is not None:
        saved = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        torch.save(saved, directory / OPTIMIZER_FILE)
    state.save(directory)


def _merged(policy, adapter_dir: Path, *, sharded: bool):
    """The LoRA policy with its adapters merged into the base weights, a model of its own. A sharded policy
    cannot be copied on one rank: its base model is loaded afresh with the adapter just written."""
    if not sharded:
        import copy

        return copy.deepcopy(policy).merge_and_unload()
    from peft import AutoPeftModelForCausalLM

    return AutoPeftModelForCausalLM.from_pretrained(str(adapter_dir)).merge_and_unload()


def load_optimizer_state(directory: Path, optimizer, scheduler) -> None:
    """Restore the optimizer and scheduler written by ``write_training_state`` (tensors only)."""
    import torch

    saved = torch.load(directory / OPTIMIZER_FILE, weights_only=True, map_location="cpu")
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
