"""``resources.strategy: fsdp``: the models sharded over the ranks with torch's FSDP2 (``fully_shard``), and
what a checkpoint needs from sharded models (a gathered state dict, each rank's optimizer shard).

Each decoder layer is one FSDP unit, then the root (embeddings, final norm, head): a rank holds 1/N of
every parameter, its gradient and its AdamW moments, and all-gathers one layer's weights at a time for a
forward or backward (resharded afterwards). The frozen reference and PPO's critic are sharded the same way.
Generation runs on the sharded policy with Hugging Face's ``generate(synced_gpus=True)`` (set through the
``_is_fsdp_managed_module`` flag transformers reads): every new token is a forward, so every layer's
weights are all-gathered once per token, and ranks whose samples ended keep stepping until all have.

The process group is the one ``accelerate``'s ``Accelerator`` set up (gloo on CPU, NCCL on GPUs), and
``fully_shard`` is called here directly rather than through accelerate's FSDP plugin: the models are sharded
before the optimizer is built, the same way on CPU ranks and GPUs, with no launcher configuration.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

FSDP = "fsdp"


def _layer_class_names(model: nn.Module) -> set[str]:
    """Decoder layer classes, as Hugging Face models name them in ``_no_split_modules``."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    return names


def shard(model: nn.Module, mixed_bf16: bool = False, *, frozen: bool = False) -> nn.Module:
    """``fully_shard`` each decoder layer of ``model``, then ``model`` itself (in place); returns it.

    FSDP keeps the root's weights (embeddings, head) gathered after a forward, for the backward that
    usually follows; a ``frozen`` model (the reference) has no backward, so its root reshards at once."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if mixed_bf16
        else MixedPrecisionPolicy()
    )
    names = _layer_class_names(model)
    for m in list(model.modules()):
        if type(m).__name__ in names:
            fully_shard(m, mp_policy=mp)
        if hasattr(m, "generate") and hasattr(m, "config"):
            m._is_fsdp_managed_module = True  # transformers' generate() then keeps the ranks in step
    root = {"reshard_after_forward": True} if frozen else {}
    units = _outer_hf_models(model)
    for m in units:
        fully_shard(m, mp_policy=mp, **root)
    covered = {id(p) for m in units for p in m.parameters()}
    if not units or any(id(p) not in covered for p in model.parameters()):
        fully_shard(model, mp_policy=mp, **root)  # a critic's head besides its backbone: the wrapper is root
    return model


def _outer_hf_models(model: nn.Module) -> list[nn.Module]:
    """The outermost Hugging Face models strictly inside ``model`` (a PEFT wrapper's causal LM, a critic's
    backbone): each its own FSDP unit, so that its weights are gathered whenever it runs, also when
    ``generate()`` calls it past the wrapper's forward. A wrapper without weights of its own (PEFT's) is
    not sharded itself: its causal LM is the root. Never one inside another (the causal LM's inner model):
    tied embeddings and head must stay in one unit."""
    from transformers import PreTrainedModel

    chosen: list[str] = []
    found = []
    for name, m in model.named_modules():
        if not name or not isinstance(m, PreTrainedModel):
            continue
        if any(name.startswith(c + ".") for c in chosen):
            continue
        chosen.append(name)
        found.append(m)
    return found if not isinstance(model, PreTrainedModel) else []


def fsdp_roots(model: nn.Module | None) -> list[nn.Module]:
    """The outermost FSDP modules of ``model`` (itself, or a PEFT wrapper's causal LM), in one walk; empty:
    not sharded."""
    from torch.distributed.fsdp import FSDPModule

    if model is None:
        return []
    roots: list[nn.Module] = []
    inside: list[str] = []  # name prefixes of the roots found: modules under them are not roots
    for name, m in model.named_modules():
        if isinstance(m, FSDPModule) and not any(name.startswith(p) for p in inside):
            roots.append(m)
            inside.append(f"{name}." if name else "")
    return roots


@contextlib.contextmanager
def no_gradient_sync(roots: list[nn.Module]):
    """No reduce-scatter of gradients in this backward (the micro-batches before the last of a minibatch),
    for the FSDP ``roots`` of a model (``fsdp_roots``)."""
    for r in roots:
        r.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        for r in roots:
            r.set_requires_gradient_sync(True)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict on rank 0's CPU (empty on the other ranks). A collective: every rank
    calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


# ---- the optimizer's shards: one file per rank, plain local tensors ----------------------------------------

SHARD_DIR = "optimizer"


def shard_file(rank: int, world: int) -> str:
    return f"{SHARD_DIR}/rank-{rank:05d}-of-{world:05d}.pt"


def _local(value):
    from torch.distributed.tensor import DTensor

    return value.to_local() if isinstance(value, DTensor) else value


def local_optimizer_state(optimizer, scheduler) -> dict:
    """This rank's optimizer state (its shard of every moment, as plain tensors) and the scheduler's."""
    sd = optimizer.state_dict()
    state = {k: {n: _local(v) for n, v in s.items()} for k, s in sd["state"].items()}
    return {"optimizer": {**sd, "state": state}, "scheduler": scheduler.state_dict()}


def load_optimizer_shard(directory: Path, optimizer, scheduler, rank: int, world: int) -> None:
    """Restore this rank's shard written by ``local_optimizer_state``: exact at the same world size only."""
    from torch.distributed.tensor import DTensor

    from rlcore.errors import ErrorCode, RLFTError

    path = directory / shard_file(rank, world)
    if not path.is_file():
        found = sorted(p.name for p in (directory / SHARD_DIR).glob("rank-*.pt"))
        raise RLFTError(
            f"checkpoint {directory.name} holds no optimizer shard for rank {rank} of {world} "
            f"(it has {', '.join(found) or 'none'}): resume an fsdp checkpoint with the resources.gpus "
            "it was written with",
            code=ErrorCode.CHECKPOINT_INVALID,
        )
    saved = torch.load(path, weights_only=True, map_location="cpu")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for k, s in saved["optimizer"]["state"].items():
        p = params[int(k)]
        state[k] = {
            n: (
                DTensor.from_local(
                    v.to(p.device), p.device_mesh, p.placements, shape=p.shape, stride=p.stride()
                )
                if isinstance(p, DTensor) and v.dim() > 0
                else v
            )
            for n, v in s.items()
        }
    optimizer.load_state_dict({**saved["optimizer"], "state": state})
    scheduler.load_state_dict(saved["scheduler"])


# ---- the trainer's models on the ranks: DDP through accelerate, or FSDP2 ----------------------------------


def enable_gradient_checkpointing(*models: nn.Module | None) -> None:
    """Hugging Face's gradient checkpointing on each Hugging Face model inside ``models`` (the policy, a
    separate critic's backbone); non-reentrant, so LoRA's frozen inputs need no special care. It acts in
    training mode only: generation (eval mode) keeps its KV cache."""
    kwargs = {"use_reentrant": False}
    for model in models:
        if model is None:
            continue
        for m in model.modules():
            if getattr(m, "supports_gradient_checkpointing", False):
                if hasattr(m, "activation_checkpointing_enable"):  # transformers >= 5.x's name
                    m.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
                else:
                    m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
                break  # the outermost Hugging Face model sets it for its layers


@dataclass
class Placed:
    """The trainer's models on this rank, their optimizer and scheduler, and the batch sizes of a rank."""

    tokenizer: object
    policy: nn.Module
    reference: object  # rlcore.models.Reference | None
    value: nn.Module | None
    optimizer: object
    scheduler: object
    sizes: object  # rlcore.update.BatchSizes


def load_and_place(acc, spec, resume_dir: Path | None, *, fsdp: bool, mixed_bf16: bool) -> Placed:
    """The tokenizer and models of ``spec`` (from ``resume_dir`` when resuming), gradient checkpointing on
    when asked, on this rank: DDP through accelerate's ``prepare`` (which wraps them), or FSDP (each model,
    the frozen reference too, sharded), then the optimizer over the trainable (sharded) parameters."""
    from rlcore.models import load_models, load_tokenizer
    from rlcore.optim import make_optimizer, make_scheduler
    from rlcore.update import BatchSizes

    hp = spec.hyperparameters
    tokenizer = load_tokenizer(spec.model)
    # Under FSDP the models stay on the CPU until sharded: fully_shard moves each rank's shards to its device.
    device = torch.device("cpu") if fsdp else acc.device
    policy, reference, value = load_models(spec, device, mixed_bf16, resume_dir)
    if hp.gradient_checkpointing:
        enable_gradient_checkpointing(policy, value)
    if fsdp:
        for model in (policy, value):
            if model is not None:
                shard(model, mixed_bf16)
        if reference is not None and reference.model is not None:
            shard(reference.model, mixed_bf16, frozen=True)
    sizes = BatchSizes.of(spec, acc.num_processes)
    optimizer = make_optimizer(policy, value, hp)
    total = hp.steps * hp.epochs_per_rollout * sizes.num_minibatches
    scheduler = make_scheduler(optimizer, hp, total)
    if fsdp:
        optimizer, scheduler = acc.prepare(optimizer, scheduler)
    else:
        models = [policy] if value is None else [policy, value]
        *models, optimizer, scheduler = acc.prepare(*models, optimizer, scheduler)
        policy, value = models[0], (models[1] if value is not None else None)
    return Placed(tokenizer, policy, reference, value, optimizer, scheduler, sizes)


def save_checkpoint(
    acc, output_dir, step: int, fsdp: bool, keep: int, *, policy, value, optimizer, scheduler, **rest
):
    """Write checkpoint ``step`` (``rest``: ``write_training_state``'s tokenizer, state and merge_lora);
    ``(path, manifest)`` on rank 0, ``(None, None)`` elsewhere.

    DDP: rank 0 writes it all (every rank holds everything). FSDP: every rank takes part in gathering the
    full state dicts onto rank 0's CPU and writes its own optimizer shard into a staging directory, which
    rank 0 moves into the checkpoint before sealing it with the manifest."""
    import shutil

    from rlcore import checkpoint as ckpt
    from rlcore.layout import checkpoint_root, step_dir_name

    models = dict(policy=acc.unwrap_model(policy), value_model=acc.unwrap_model(value) if value else None)
    if fsdp:
        models["policy_state"] = full_state_dict(policy)  # collectives: every rank
        models["value_state"] = full_state_dict(value) if value is not None else None
        staging = checkpoint_root(output_dir) / f".tmp-shards-{step_dir_name(step)}"
        if acc.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            (staging / SHARD_DIR).mkdir(parents=True)
        acc.wait_for_everyone()
        shard = local_optimizer_state(optimizer, scheduler)
        torch.save(shard, staging / shard_file(acc.process_index, acc.num_processes))
        acc.wait_for_everyone()
    path = manifest = None
    if acc.is_main_process:

        def write(directory: Path) -> None:
            if not fsdp:
                ckpt.write_training_state(
                    directory, optimizer=optimizer, scheduler=scheduler, **models, **rest
                )
                return
            ckpt.write_training_state(directory, optimizer=None, scheduler=None, **models, **rest)
            (staging / SHARD_DIR).rename(directory / SHARD_DIR)
            shutil.rmtree(staging, ignore_errors=True)

        path, manifest = ckpt.save_checkpoint(output_dir, step, write, keep=keep)
    acc.wait_for_everyone()
    return path, manifest


def load_optimizer(directory: Path, acc, optimizer, scheduler, *, fsdp: bool) -> None:
    """The optimizer and scheduler of a checkpoint: ``optimizer.pt``, or under FSDP this rank's shard."""
    from rlcore import checkpoint as ckpt

    if fsdp:
        load_optimizer_shard(directory, optimizer, scheduler, acc.process_index, acc.num_processes)
    elif not (directory / ckpt.OPTIMIZER_FILE).is_file() and (directory / SHARD_DIR).is_dir():
        from rlcore.errors import ErrorCode, RLFTError

        raise RLFTError(
            f"checkpoint {directory.name} was written under resources.strategy 'fsdp' (its optimizer state "
            "is sharded by rank): resume it with strategy 'fsdp' and the resources.gpus it was written "
            "with, or start a new job from its model/ directory",
            code=ErrorCode.CHECKPOINT_INVALID,
        )
    else:
        ckpt.load_optimizer_state(directory, optimizer, scheduler)


def end_process_group() -> None:
    """Leave the process group before the process exits, every rank together.

    A rank that exits with its gloo/NCCL group still up can abort in the library's teardown ("terminate called
    without an active exception", exit -6) after a run that succeeded; the launcher then reports the job as
    crashed. The barrier first, so no rank tears down while another still talks to it.
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(RuntimeError):  # a peer already gone: nothing left to wait for
            dist.barrier()
        dist.destroy_process_group()
