"""Checkpoints: registration by workers, the best one, listing and lookup."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.crud.metrics import add_event
from service.errors import NotFound
from service.models import Checkpoint, Job, new_id, utcnow
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
    _mark_best(session, job.id)
    add_event(session, job.id, "message", f"checkpoint saved at step {body.step}", {"checkpoint": ckpt.id})
    return ckpt.id


BEST_METRIC = "reward/mean"


def _mark_best(session: Session, job_id: str) -> None:
    """The best checkpoint has the highest ``reward/mean``; without that metric, the newest is best."""
    ckpts = list(session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)))
    scored = [c for c in ckpts if isinstance(c.metrics.get(BEST_METRIC), (int, float))]
    pool = scored or ckpts
    best = max(pool, key=lambda c: (c.metrics.get(BEST_METRIC, 0.0) if scored else 0.0, c.step))
    for c in ckpts:
        c.best = c is best


def list_checkpoints(session: Session, job_id: str) -> list[Checkpoint]:
    return list(
        session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step))
    )


def get_checkpoint(session: Session, job_id: str, ckpt_id: str) -> Checkpoint:
    ckpt = session.scalar(select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.id == ckpt_id))
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
    stmt = select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step.desc()).limit(1)
    return session.scalar(stmt)
