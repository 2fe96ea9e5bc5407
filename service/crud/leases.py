"""The worker's side of a job: claim (compare-and-set), fence, heartbeat, finish; the reaper."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.orm import Session

from rlcore.errors import ErrorCode
from service.crud.jobs import apply, schedule_enqueue
from service.crud.metrics import add_event
from service.errors import Conflict, NotFound
from service.models import LEASED, Job, JobStatus, utcnow
from service.schemas import FinishRequest
from service.states import FINISH_ACTIONS, TABLE, Action

S = JobStatus


# The claim is one compare-and-set UPDATE: the state table's claim row, written as SQL.
_CLAIM = TABLE[Action.CLAIM]
(_CLAIMED,) = {m.target for m in _CLAIM.values() if m}


def claim(session: Session, job_id: str, worker_id: str, lease_seconds: int) -> Job:
    """Compare-and-set queued → running; bumps the fence so that any older holder's writes are refused.

    A claim repeated by the worker that holds a live lease on the job (its first answer was lost) answers
    the same claim again: same fence, same attempt, no new event. Any other claim of a leased job is 409.
    """
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_([s.value for s in _CLAIM]))
        .values(
            status=_CLAIMED.value,
            lease_owner=worker_id,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            fence=Job.fence + 1,
            attempts=Job.attempts + 1,
            started_at=func.coalesce(Job.started_at, now),
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise NotFound("job", job_id)
    if result.rowcount != 1:
        if _holds_live_lease(session, job_id, worker_id, now):
            return job
        raise Conflict(f"job {job_id} is {job.status}, not queued: nothing to claim", code="not_claimable")
    add_event(
        session, job.id, "status", f"claimed by {worker_id} (attempt {job.attempts})", {"status": job.status}
    )
    return job


def _holds_live_lease(session: Session, job_id: str, worker_id: str, now: datetime) -> bool:
    stmt = select(Job.id).where(
        Job.id == job_id,
        Job.status.in_([s.value for s in LEASED]),
        Job.lease_owner == worker_id,
        Job.lease_expires_at > now,
    )
    return session.scalar(stmt.with_for_update()) is not None


def fail_unservable(session: Session, job: Job, code: str, message: str) -> None:
    """A claimed job that no worker can run (its dataset or checkpoint is gone or unreadable): failed now,
    rather than claimed, crashed and requeued until its attempts run out."""
    apply(session, job, Action.FAIL, f"job failed: {code}", error_code=code, error_message=message)


def fenced_job(
    session: Session, job_id: str, fence: int, *, states: frozenset[JobStatus] | None = LEASED
) -> Job:
    """The job locked for a worker write, or 409 when the fence is stale or the job no longer leased."""
    job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if job is None:
        raise NotFound("job", job_id)
    if fence != job.fence:
        raise Conflict(
            f"stale fence {fence} for job {job_id}: another claim holds it now", code="stale_fence"
        )
    if states is not None and S(job.status) not in states:
        raise Conflict(f"job {job_id} is {job.status}; this worker no longer holds it", code="not_leased")
    return job


_ACTIONS = {S.RUNNING: "continue", S.CANCELLING: "cancel", S.PAUSING: "pause"}


def heartbeat(
    session: Session, job: Job, lease_seconds: int, step: int | None, total_steps: int | None
) -> tuple[str, datetime]:
    now = utcnow()
    job.lease_expires_at = now + timedelta(seconds=lease_seconds)
    if step is not None:
        job.progress_step = max(job.progress_step, step)
    if total_steps:
        job.total_steps = total_steps
    job.updated_at = now
    return _ACTIONS[S(job.status)], job.lease_expires_at


def finish(session: Session, job: Job, body: FinishRequest) -> None:
    target = S(body.status)
    if target is S.FAILED:
        error = body.error or _unknown_error()
        apply(
            session,
            job,
            Action.FAIL,
            f"job failed: {error.code}",
            error_code=error.code,
            error_message=error.message,
        )
    else:
        apply(session, job, FINISH_ACTIONS[target])


def _unknown_error() -> Any:
    from service.schemas import ErrorInfo

    return ErrorInfo(code=ErrorCode.INTERNAL_ERROR, message="the worker reported a failure without an error")


# --- the reaper and the reconciler ---


def reap_expired(session: Session, max_attempts: int, enqueue: Callable[[str, str], Any]) -> int:
    """Leases that ran out: every leased state has a way out (a lost worker must not leave a job stuck)."""
    now = utcnow()
    stmt = select(Job).where(Job.status.in_([s.value for s in LEASED]), Job.lease_expires_at < now)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    jobs = list(session.scalars(stmt.limit(500)))
    for job in jobs:
        _reap_one(session, job, max_attempts, enqueue)
    return len(jobs)


def _reap_one(session: Session, job: Job, max_attempts: int, enqueue: Callable[[str, str], Any]) -> None:
    current = S(job.status)
    if current is not S.RUNNING:
        apply(session, job, Action.REAP)  # cancelling → cancelled, pausing → paused
    elif job.attempts < max_attempts:
        apply(
            session,
            job,
            Action.REAP,
            f"lease of {job.lease_owner} expired; job requeued",
            lease_owner=None,
            lease_expires_at=None,
            enqueued_at=utcnow(),
        )
        schedule_enqueue(session, job, enqueue)
    else:
        apply(
            session,
            job,
            Action.REAP_LAST,
            error_code=ErrorCode.WORKER_LOST_REPEATEDLY,
            error_message=f"its worker stopped heartbeating in each of {job.attempts} attempts",
        )


def reconcile_queued(session: Session, older_than_s: float, enqueue: Callable[[str, str], Any]) -> int:
    """Re-send queued jobs whose message may have been lost; the claim CAS makes a duplicate harmless."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    stmt = select(Job).where(
        Job.status == S.QUEUED.value, and_(Job.enqueued_at.is_not(None), Job.enqueued_at < cutoff)
    )
    jobs = list(session.scalars(stmt.limit(500)))
    for job in jobs:
        job.enqueued_at = utcnow()
        schedule_enqueue(session, job, enqueue)
    return len(jobs)
