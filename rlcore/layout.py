"""Where a job's files live: the engine's ``output_dir`` and the artifact store, laid out alike.

One definition for every process that reads or writes them (the engine, the training process, the worker's
supervisor, the service):

  output_dir/checkpoints/step-000010/     {store}/{job_id}/checkpoints/step-000010/
  output_dir/rewards/step-000010.rank0.json   {store}/{job_id}/rewards/   (recorded rewards, mirrored)
  {store}/files/{tenant_id}/{file_id}.jsonl   (uploaded datasets, the service's)

The store is a local path or an fsspec URL (``s3://bucket/prefix``); ``store_join`` joins either.
Torch-free, like ``rlcore.errors``.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

CHECKPOINTS_DIR = "checkpoints"
REWARDS_DIR = "rewards"
FILES_DIR = "files"
STEP_PREFIX = "step-"


def step_dir_name(step: int) -> str:
    """``step-000010``: a checkpoint directory's name, and the stem of a step's recorded rewards."""
    return f"{STEP_PREFIX}{step:06d}"


def step_of(name: str) -> int:
    """The step a ``step_dir_name`` names."""
    return int(name[len(STEP_PREFIX) :])


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


def rewards_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / REWARDS_DIR


def store_join(base: str, *parts: str) -> str:
    """``base`` (a local path or an fsspec URL) joined with ``parts``; a URL keeps ``/`` whatever the OS."""
    if "://" in base:
        return posixpath.join(base.rstrip("/"), *parts)
    return str(Path(base).joinpath(*parts))


def checkpoint_location(store: str, job_id: str, step: int) -> str:
    """Where a job's checkpoint of ``step`` lives in the store (a directory URL or path)."""
    return store_join(store, job_id, CHECKPOINTS_DIR, step_dir_name(step))


def rewards_location(store: str, job_id: str) -> str:
    """Where a job's recorded rewards are mirrored, so that a resume on another machine reuses them."""
    return store_join(store, job_id, REWARDS_DIR)


def file_location(store: str, tenant_id: str, file_id: str) -> str:
    """Where the service keeps an uploaded dataset."""
    return store_join(store, FILES_DIR, tenant_id, f"{file_id}.jsonl")
