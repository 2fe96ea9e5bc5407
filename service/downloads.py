"""Checkpoint archives: which files a download sends, and the lease that keeps them while it runs.

A download takes a lease on its checkpoint in the same transaction that checks the checkpoint was not let
go by retention (row locked), and renews it while the response streams; the reaper's sweep removes a
let-go checkpoint's files only when no lease on it is live. So retention never cuts a download.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Literal

import anyio
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from service import crud, storage
from service.db import session_scope
from service.errors import ApiError, Conflict
from service.models import Checkpoint, Job, utcnow

log = logging.getLogger(__name__)

# A lease outlives a stalled client by this long; the stream renews it every DOWNLOAD_RENEW_S.
DOWNLOAD_LEASE_S = 120.0
DOWNLOAD_RENEW_S = 20.0

# The checkpoint directory a download sends, by name (rlcore/checkpoint.py: merged/ is LoRA merged on save).
Variant = Literal["model", "merged"]


class CheckpointDeleted(ApiError):
    status_code = 410

    def __init__(self, job: Job, ckpt: Checkpoint):
        super().__init__(
            f"checkpoint {ckpt.id} (step {ckpt.step}) was deleted by the job's retention policy "
            "(checkpoints.keep_last / keep_best); download a kept one, e.g. the best: "
            f"GET /v1/jobs/{job.id}/checkpoints?best=true",
            code="checkpoint_deleted",
        )


@dataclass(frozen=True)
class Archive:
    lease_id: str
    location: str
    files: list[dict]
    root: str
    subdir: str


def open_archive(session: Session, job: Job, ckpt_id: str, variant: Variant) -> Archive:
    """Check the checkpoint can be sent and take a lease on its files (committed with ``session``)."""
    ckpt = crud.get_checkpoint(session, job.id, ckpt_id, lock=True)
    if ckpt.deleted_at is not None:
        raise CheckpointDeleted(job, ckpt)
    paths = {f["path"] for f in ckpt.files or []}
    if variant == "merged" and "merged/config.json" not in paths:
        raise Conflict(
            f"checkpoint {ckpt.id} (step {ckpt.step}) has no merged model: only a LoRA job with "
            "model.merge_lora_on_save: true writes one, in its final checkpoint; download variant=model "
            "(the adapter) or the job's final checkpoint",
            code="no_merged_model",
        )
    if not storage.exists(ckpt.location):
        raise ApiError(
            f"the files of checkpoint {ckpt.id} are no longer in the artifact store",
            code="gone",
            status_code=410,
        )
    lease_id = crud.take_download_lease(session, ckpt, DOWNLOAD_LEASE_S)
    suffix = "-merged" if variant == "merged" else ""
    return Archive(lease_id, ckpt.location, list(ckpt.files), f"{job.id}-step-{ckpt.step}{suffix}", variant)


async def leased_stream(factory: sessionmaker[Session], archive: Archive) -> AsyncIterator[bytes]:
    """The tar of ``archive``, its lease renewed while it streams (however slowly the client reads) and
    ended when it is done or the client went away."""
    renewer = asyncio.create_task(_renew(factory, archive.lease_id))
    chunks: Iterator[bytes] = storage.stream_tar(
        archive.location, archive.files, archive.root, archive.subdir
    )
    try:
        async for chunk in iterate_in_threadpool(chunks):
            yield chunk
    finally:
        renewer.cancel()
        # Shielded: a client that went away cancels the stream, and the lease must still end now.
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            await run_in_threadpool(_end, factory, archive.lease_id)


async def _renew(factory: sessionmaker[Session], lease_id: str) -> None:
    while True:
        await asyncio.sleep(DOWNLOAD_RENEW_S)
        try:
            await run_in_threadpool(_renew_once, factory, lease_id)
        except Exception:  # noqa: BLE001 - a database blip: the lease has DOWNLOAD_LEASE_S to spare
            log.warning("could not renew download lease %s; retrying", lease_id, exc_info=True)


def _renew_once(factory: sessionmaker[Session], lease_id: str) -> None:
    with session_scope(factory) as session:
        crud.renew_download_lease(session, lease_id, DOWNLOAD_LEASE_S)


def _end(factory: sessionmaker[Session], lease_id: str) -> None:
    try:
        with session_scope(factory) as session:
            crud.end_download_lease(session, lease_id)
    except Exception:  # noqa: BLE001 - the lease runs out by itself
        log.warning("could not end download lease %s", lease_id, exc_info=True)


def purge_deleted(factory: sessionmaker[Session]) -> int:
    """Remove from the store the files of let-go checkpoints no download holds; returns how many."""
    with session_scope(factory) as session:
        crud.drop_expired_download_leases(session)
        candidates = crud.purgeable_checkpoints(session)
    purged = 0
    for ckpt_id, location in candidates:
        try:
            storage.remove_tree(location)
        except OSError:
            log.warning("could not delete checkpoint %s at %s; retrying next sweep", ckpt_id, location)
            continue
        with session_scope(factory) as session:
            crud.mark_purged(session, ckpt_id, utcnow())
        purged += 1
    return purged
