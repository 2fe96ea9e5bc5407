"""Checks a submitted job must pass beyond ``JobSpec``: the dataset, the reward URL policy, the model, the
resources."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from rlcore.errors import RewardURLForbidden
from rlcore.jsonl import read_rows
from rlcore.modelpolicy import (
    ModelForbidden,
    ModelNotLoadable,
    check_gguf_inside,
    check_loadable,
    check_model_source,
    forbidden_dirs,
    resolve_roots,
)
from rlcore.spec import DatasetSpec, JobSpec
from rlft_contracts.settings import Settings
from service import crud
from service.errors import Invalid
from service.models import Checkpoint, Tenant

MAX_INLINE_ROWS = 10_000


def check_reward_url(url: str | None, settings: Settings, field: str = "reward.url") -> None:
    if not url:
        raise Invalid("reward.url is required: the endpoint that scores completions", field=field)
    from rlcore.rewards.urlpolicy import RewardURLPolicy

    try:
        RewardURLPolicy.from_settings(settings).check(url)
    except RewardURLForbidden as e:
        raise Invalid(e.message, field=field, code=e.code) from e


def check_dataset(session: Session, tenant: Tenant, spec: JobSpec, settings: Settings) -> None:
    """The training dataset and, with ``evaluation``, the held-out one: each must be the tenant's to use."""
    _check_one_dataset(session, tenant, spec.dataset, "dataset", settings)
    if spec.evaluation is not None:
        _check_one_dataset(session, tenant, spec.evaluation.dataset, "evaluation.dataset", settings)


def _check_one_dataset(
    session: Session, tenant: Tenant, ds: DatasetSpec, field: str, settings: Settings
) -> None:
    limit = min(MAX_INLINE_ROWS, settings.max_dataset_rows)
    if ds.rows is not None and len(ds.rows) > limit:
        # Inline rows travel in every GET of the job; a big dataset belongs in a file.
        raise Invalid(
            f"{field}.rows has {len(ds.rows)} rows; inline datasets hold at most {limit}: upload a JSONL "
            f"file with POST /v1/files and use {field}.file_id",
            field=f"{field}.rows",
        )
    if ds.file_id is not None and crud.file_for_tenant(session, tenant.id, ds.file_id) is None:
        raise Invalid(
            f"{field}.file_id {ds.file_id!r} is not one of your files: upload it with POST /v1/files first",
            field=f"{field}.file_id",
        )
    if ds.path is not None:
        _check_path(ds.path, field, settings)


def _check_path(path: str, dataset_field: str, settings: Settings) -> None:
    # A server-side path would let a tenant make workers read any file they can reach; only a
    # single-user dev setup (shared disk, one tenant) may use one.
    field = f"{dataset_field}.path"
    if not settings.dev_mode:
        raise Invalid(
            f"{field} is not accepted by the service: upload the file with POST /v1/files and "
            f"use {dataset_field}.file_id",
            field=field,
        )
    p = Path(path)
    if not p.is_file():
        raise Invalid(f"{field} {path!r} does not exist on the service machine", field=field)
    try:
        with p.open("rb") as f:
            read_rows(f)
    except ValueError as e:
        raise Invalid(f"{field} {path!r}: {e}", field=field) from e


def check_model(session: Session, tenant: Tenant, spec: JobSpec, settings: Settings) -> None:
    """Hub ids, the tenant's own checkpoints, directories under RLFT_MODEL_ROOTS (rlcore/modelpolicy.py)."""
    model = spec.model
    if model.checkpoint is not None:
        ckpt = crud.checkpoint_for_tenant(session, tenant.id, model.checkpoint)
        if ckpt is None:
            # Another tenant's checkpoint answers exactly like a missing one.
            raise Invalid(
                f"model.checkpoint {model.checkpoint!r} is not one of your checkpoints: list them with "
                "GET /v1/jobs/{job_id}/checkpoints",
                field="model.checkpoint",
                code="model_checkpoint_not_found",
            )
        if ckpt.deleted_at is not None:
            raise Invalid(
                f"model.checkpoint {model.checkpoint!r} was deleted by its job's retention policy "
                "(checkpoints.keep_last / keep_best): continue from a kept checkpoint",
                field="model.checkpoint",
                code="checkpoint_deleted",
            )
        if checkpoint_model_dir(ckpt) is None:
            raise Invalid(
                f"checkpoint {ckpt.id} holds only a LoRA adapter, not a model to train from: continue from "
                "a checkpoint with a merged model (the final checkpoint of a job run with "
                "model.merge_lora_on_save: true), or download it and merge the adapter yourself",
                field="model.checkpoint",
                code="model_checkpoint_adapter_only",
            )
    roots = resolve_roots(settings.model_roots)
    forbidden = forbidden_dirs(settings.artifact_store, settings.data_dir)
    for field, value in (
        ("model.name_or_path", model.name_or_path),
        ("model.value_name_or_path", model.value_name_or_path),
    ):
        if value is None:
            continue
        gguf_file = model.gguf_file if field == "model.name_or_path" else None
        try:
            path = check_model_source(value, field, roots, forbidden)
            if path is not None:
                if gguf_file is not None:
                    check_gguf_inside(path, gguf_file, roots, forbidden)
                check_loadable(path, value, field, gguf_file)
        except (ModelForbidden, ModelNotLoadable) as e:
            raise Invalid(
                e.message, field=e.field if isinstance(e, ModelForbidden) else field, code=e.code
            ) from e


def checkpoint_model_dir(ckpt: Checkpoint) -> str | None:
    """The directory of a checkpoint a job can train from: ``merged/`` (LoRA, merged on save) or ``model/``
    (full weights); None when ``model/`` is only a LoRA adapter."""
    paths = {f["path"] for f in ckpt.files or []}
    for subdir in ("merged", "model"):
        if f"{subdir}/config.json" in paths:
            return subdir
    return None


def check_resources(spec: JobSpec, settings: Settings) -> None:
    gpus = spec.resources.gpus
    if gpus > settings.max_gpus_per_job:
        raise Invalid(
            f"resources.gpus is {gpus}; this service runs jobs on at most {settings.max_gpus_per_job} "
            "GPUs (RLFT_MAX_GPUS_PER_JOB): ask for fewer",
            field="resources.gpus",
            code="too_many_gpus",
        )
