"""Checkpoints: registration by workers, the best one and retention, listing, downloads and their leases."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, exists, select, update
from sqlalchemy.orm import Session

from service import retention
from service.crud.metrics import add_event
from service.errors import NotFound
from service.models import Checkpoint, CheckpointDownload, Job, new_id, utcnow
from service.schemas import CheckpointRegister


def register_checkpoint(session: Session, job: Job, body: CheckpointRegister) -> str:
    existing = session.scalar(
        select(Checkpoint).where(Checkpoint.job_id == job.id, Checkpoint.step == body.step)
    )
    if existing is not None:
        return existing.id  # idempotent per (job, step): a retried registration names the same checkpoint
    ckpt = Checkpoint(
        id=new_id("ckpt"),
        job_id=job.id,
        step=body.step,
        location=body.location,
        manifest_sha256=body.manifest_sha256,
        size_bytes=body.size_bytes,
        files=[f.model_dump() for f in body.files],
        metrics=body.metrics,
        best=False,
        created_at=utcnow(),
    )
    session.add(ckpt)
    session.flush()
    add_event(session, job.id, "message", f"checkpoint saved at step {body.step}", {"checkpoint": ckpt.id})
    _retain(session, job)
    return ckpt.id


def _retain(session: Session, job: Job) -> None:
    """Mark the best checkpoint and let go of those the job's policy does not keep (service/retention.py).

    Let go: ``deleted_at`` is set (downloads answer 410 from now on); the reaper's sweep removes the files
    once no download in progress holds them. The caller holds the job's row lock.
    """
    policy = retention.checkpoint_policy(job.spec)
    live = list(
        session.scalars(
            select(Checkpoint).where(Checkpoint.job_id == job.id, Checkpoint.deleted_at.is_(None))
        )
    )
    plan = retention.plan(live, policy)
    now = utcnow()
    gone = sorted((c for c in live if c.id not in plan.keep), key=lambda c: c.step)
    for c in live:
        c.best = c.id == plan.best
        if c.id not in plan.keep:
            c.deleted_at = now
    if gone:
        steps = ", ".join(str(c.step) for c in gone)
        add_event(
            session,
            job.id,
            "message",
            f"checkpoint(s) at step {steps} deleted by retention (keep_last={policy.keep_last}, "
            f"keep_best={policy.keep_best} by {policy.best_metric} {policy.best_mode})",
            {"deleted_checkpoints": [c.id for c in gone]},
        )


def list_checkpoints(session: Session, job_id: str, *, best: bool = False) -> list[Checkpoint]:
    stmt = select(Checkpoint).where(Checkpoint.job_id == job_id)
    if best:
        stmt = stmt.where(Checkpoint.best.is_(True), Checkpoint.deleted_at.is_(None))
    return list(session.scalars(stmt.order_by(Checkpoint.step)))


def get_checkpoint(session: Session, job_id: str, ckpt_id: str, *, lock: bool = False) -> Checkpoint:
    stmt = select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.id == ckpt_id)
    ckpt = session.scalar(stmt.with_for_update() if lock else stmt)
    if ckpt is None:
        raise NotFound("checkpoint", ckpt_id)
    return ckpt


def checkpoint_for_tenant(session: Session, tenant_id: str, ckpt_id: str) -> Checkpoint | None:
    """A checkpoint of one of the tenant's jobs; None for a missing one and for another tenant's alike."""
    stmt = (
        select(Checkpoint)
        .join(Job, Job.id == Checkpoint.job_id)
        .where(Checkpoint.id == ckpt_id, Job.tenant_id == tenant_id)
    )
    return session.scalar(stmt)


def newest_checkpoint(session: Session, job_id: str) -> Checkpoint | None:
    """The checkpoint a resume starts from (retention never lets the newest go)."""
    stmt = (
        select(Checkpoint)
        .where(Checkpoint.job_id == job_id, Checkpoint.deleted_at.is_(None))
        .order_by(Checkpoint.step.desc())
        .limit(1)
    )
    return session.scalar(stmt)


# --- downloads in progress hold leases; the files of a let-go checkpoint go once none is live ---


def take_download_lease(session: Session, ckpt: Checkpoint, seconds: float) -> str:
    """A lease on ``ckpt``'s files (the caller locked the row and saw it is not deleted)."""
    lease = CheckpointDownload(
        id=new_id("dl"), checkpoint_id=ckpt.id, expires_at=utcnow() + timedelta(seconds=seconds)
    )
    session.add(lease)
    return lease.id


def renew_download_lease(session: Session, lease_id: str, seconds: float) -> None:
    expires = utcnow() + timedelta(seconds=seconds)
    session.execute(
        update(CheckpointDownload).where(CheckpointDownload.id == lease_id).values(expires_at=expires)
    )


def end_download_lease(session: Session, lease_id: str) -> None:
    session.execute(delete(CheckpointDownload).where(CheckpointDownload.id == lease_id))


def purgeable_checkpoints(session: Session, limit: int = 100) -> list[tuple[str, str]]:
    """(id, location) of let-go checkpoints whose files may go: no download holds a live lease on them.

    A let-go checkpoint takes no new lease (the archive route checks ``deleted_at`` under the row lock),
    so once none is live, none will be.
    """
    now = utcnow()
    live_lease = exists().where(
        CheckpointDownload.checkpoint_id == Checkpoint.id, CheckpointDownload.expires_at > now
    )
    stmt = select(Checkpoint.id, Checkpoint.location).where(
        Checkpoint.deleted_at.is_not(None), Checkpoint.purged_at.is_(None), ~live_lease
    )
    return [(r.id, r.location) for r in session.execute(stmt.limit(limit))]


def mark_purged(session: Session, ckpt_id: str, when: datetime) -> None:
    session.execute(update(Checkpoint).where(Checkpoint.id == ckpt_id).values(purged_at=when))


def drop_expired_download_leases(session: Session) -> int:
    result = session.execute(delete(CheckpointDownload).where(CheckpointDownload.expires_at < utcnow()))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
