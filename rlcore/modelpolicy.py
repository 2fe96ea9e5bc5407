"""Which models a job that came through the service may name (docs/contracts.md, "worker ⇄ service").

A tenant may name a hub id, one of its own checkpoints (``model.checkpoint``, resolved by the service), or a
directory under a root the operator exposed (``RLFT_MODEL_ROOTS``). Anything else would let one tenant make
a worker read whatever the worker can read: another tenant's checkpoint in the artifact store, the worker's
own job directories, secrets under its data directory.

Rules for ``model.name_or_path`` and ``model.value_name_or_path``, in order (``model.gguf_file``, a file
name inside ``model.name_or_path``, must resolve inside the same roots too, so a symlink cannot lead out):
  - the shape of a hub id (``name`` or ``org/name``, ``rlcore.spec.is_hub_id``): allowed; the worker loads
    it in an empty working directory, so a local directory of that name can never stand in for it;
  - an absolute path that, with symlinks and ``..`` resolved, lies in a model root and outside every
    forbidden directory (the artifact store, the data directory): allowed;
  - anything else is refused with ONE error, the same code and message whatever the path and whether it
    exists, so that the answer says nothing about the machine's files.

The API checks a job at submit, the worker again before it starts the training process. ``rlft train
--local`` does not use this module: a local run may load any directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from rlcore.errors import ErrorCode, RLFTError
from rlcore.gguf import is_gguf_file
from rlcore.spec import is_hub_id

FORBIDDEN_MESSAGE = (
    "{field} must be a hub id (name or org/name), an absolute path to a model directory under one of "
    "the model roots the operator configured (RLFT_MODEL_ROOTS), or, for model, "
    "{{checkpoint: <id of one of your checkpoints>}}"
)


class ModelForbidden(RLFTError):
    """A model the job may not name; the message is the same for every refused value."""

    code = ErrorCode.MODEL_PATH_FORBIDDEN

    def __init__(self, field: str):
        super().__init__(FORBIDDEN_MESSAGE.format(field=field))
        self.field = field


class ModelNotLoadable(RLFTError):
    """A directory under a model root that is not a Hugging Face model directory."""

    code = ErrorCode.MODEL_NOT_LOADABLE


def resolve_roots(roots: Iterable[str | os.PathLike]) -> list[Path]:
    return [Path(r).expanduser().resolve() for r in roots if str(r).strip()]


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def check_model_source(
    value: str, field: str, roots: Sequence[Path], forbidden: Sequence[Path]
) -> Path | None:
    """None for a hub id; the resolved directory for an allowed local path; else raise ``ModelForbidden``.

    ``roots`` and ``forbidden`` are resolved absolute paths (``resolve_roots``).
    """
    if is_hub_id(value):
        return None
    if "\0" in value or "\\" in value or not value.startswith("/") or not roots:
        raise ModelForbidden(field)
    try:
        path = Path(value).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a name too long
        raise ModelForbidden(field) from exc
    if not any(_inside(path, root) for root in roots) or any(_inside(path, f) for f in forbidden):
        raise ModelForbidden(field)
    return path


def check_gguf_inside(path: Path, gguf_file: str, roots: Sequence[Path], forbidden: Sequence[Path]) -> None:
    """``model.gguf_file`` in the allowed directory ``path`` must not lead out of it through a symlink."""
    try:
        target = (path / gguf_file).resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        raise ModelForbidden("model.gguf_file") from exc
    if not any(_inside(target, root) for root in roots) or any(_inside(target, f) for f in forbidden):
        raise ModelForbidden("model.gguf_file")


def check_loadable(path: Path, value: str, field: str, gguf_file: str | None = None) -> None:
    """Raise ``ModelNotLoadable`` unless ``path`` (already allowed) holds a Hugging Face ``config.json``,
    or, with ``gguf_file``, a GGUF file of that name."""
    if gguf_file is not None:
        if not is_gguf_file(path / gguf_file):
            raise ModelNotLoadable(
                f"model.gguf_file {gguf_file!r} is not a GGUF file in {value!r}: give the name of a .gguf "
                "file in that directory"
            )
        return
    if not (path / "config.json").is_file():
        raise ModelNotLoadable(
            f"{field} {value!r} is under a model root but is not a Hugging Face model directory "
            "(no config.json): give the directory that save_pretrained wrote"
        )


def forbidden_dirs(artifact_store: str, data_dir: str | os.PathLike) -> list[Path]:
    """The directories no model path may enter: the artifact store (when local) and the data directory."""
    dirs = [Path(data_dir).expanduser().resolve()]
    if "://" not in artifact_store or artifact_store.startswith("file://"):
        dirs.append(Path(artifact_store.removeprefix("file://")).expanduser().resolve())
    return dirs
