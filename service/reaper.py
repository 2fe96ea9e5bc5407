"""The background loop: requeue or fail jobs whose lease expired, re-send queued jobs whose message was lost,
remove the files of checkpoints that retention let go once no download holds them.

Runs as an asyncio task in the API's lifespan (``settings.run_background_tasks``). Several API processes
may each run it: on Postgres ``FOR UPDATE SKIP LOCKED`` keeps two sweeps off the same row, on SQLite
transactions are serialised anyway, and a duplicate enqueue is harmless (the claim is a compare-and-set).
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from rlft_contracts.settings import Settings
from service import crud, downloads
from service.db import session_scope
from service.queue import JobQueue

log = logging.getLogger(__name__)


def sweep(factory: sessionmaker[Session], settings: Settings, queue: JobQueue) -> tuple[int, int]:
    """One pass: (jobs reaped, jobs re-enqueued). Each part commits on its own."""
    purged = downloads.purge_deleted(factory)
    if purged:
        log.info("reaper: files of %d deleted checkpoint(s) removed from the artifact store", purged)
    with session_scope(factory) as session:
        reaped = crud.reap_expired(session, settings.max_attempts, queue.enqueue)
    with session_scope(factory) as session:
        resent = crud.reconcile_queued(session, settings.reconcile_after_s, queue.enqueue)
    if reaped or resent:
        log.info("reaper: %d expired lease(s) handled, %d queued job(s) re-enqueued", reaped, resent)
    return reaped, resent


async def run_forever(factory: sessionmaker[Session], settings: Settings, queue: JobQueue) -> None:
    while True:
        try:
            await run_in_threadpool(sweep, factory, settings, queue)
        except Exception:  # noqa: BLE001 - one failed sweep (database blip) must not stop the loop
            log.exception("reaper sweep failed; retrying in %.1fs", settings.reaper_interval_s)
        await asyncio.sleep(settings.reaper_interval_s)
