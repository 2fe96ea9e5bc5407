"""Checks a submitted job must pass beyond ``JobSpec``: the dataset and the reward URL policy."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy.orm import Session

from rlcore.errors import RewardURLForbidden
from rlcore.spec import JobSpec, validate_row
from rlft.settings import Settings
from service import crud
from service.errors import Invalid
from service.models import Tenant

MAX_INLINE_ROWS = 10_000


def check_reward_url(url: str | None, settings: Settings, field: str = "reward.url") -> None:
    if not url:
        raise Invalid("reward.url is required: the endpoint that scores completions", field=field)
    from rlcore.rewards.urlpolicy import check_reward_url as policy

    try:
        policy(url, settings.allow_private_reward_urls, settings.reward_url_allowlist or None)
    except RewardURLForbidden as e:
        raise Invalid(e.message, field=field, code=e.code) from e


def check_dataset(session: Session, tenant: Tenant, spec: JobSpec, settings: Settings) -> None:
    ds = spec.dataset
    if ds.rows is not None and len(ds.rows) > min(MAX_INLINE_ROWS, settings.max_dataset_rows):
        # Inline rows travel in every GET of the job; a big dataset belongs in a file.
        raise Invalid(
            f"dataset.rows has {len(ds.rows)} rows; inline datasets hold at most "
            f"{min(MAX_INLINE_ROWS, settings.max_dataset_rows)}: upload a JSONL file with POST /v1/files "
            "and use dataset.file_id",
            field="dataset.rows",
        )
    if ds.file_id is not None and crud.file_for_tenant(session, tenant.id, ds.file_id) is None:
        raise Invalid(
            f"dataset.file_id {ds.file_id!r} is not one of your files: upload it with POST /v1/files first",
            field="dataset.file_id",
        )
    if ds.path is not None:
        _check_path(ds.path, settings)


def _check_path(path: str, settings: Settings) -> None:
    # A server-side path would let a tenant make workers read any file they can reach; only a
    # single-user dev setup (shared disk, one tenant) may use one.
    if not settings.dev_mode:
        raise Invalid(
            "dataset.path is not accepted by the service: upload the file with POST /v1/files and "
            "use dataset.file_id",
            field="dataset.path",
        )
    p = Path(path)
    if not p.is_file():
        raise Invalid(f"dataset.path {path!r} does not exist on the service machine", field="dataset.path")
    rows = 0
    with p.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            rows += 1
            try:
                validate_row(json.loads(line), where=f"line {n}")
            except (ValueError, RecursionError) as e:
                raise Invalid(f"dataset.path {path!r}: {e}", field="dataset.path") from e
    if rows == 0:
        raise Invalid(f"dataset.path {path!r} has no rows", field="dataset.path")
