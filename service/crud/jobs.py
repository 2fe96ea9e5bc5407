"""Jobs: create, read, list, the tenant's files, and every change of a job's status (service/states.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from service import states
from service.crud.metrics import add_event
from service.errors import NotFound
from service.models import LEASED, TERMINAL, File, Job, JobMetadata, JobStatus, Tenant, new_id, utcnow
from service.schemas import JobPublic
from service.states import Action

S = JobStatus


def job_public(job: Job) -> JobPublic:
    error = {"code": job.error_code, "message": job.error_message or ""} if job.error_code else None
    return JobPublic(
        id=job.id,
        status=job.status,
        created_at=job.created_at,
        updated_at=job.updated_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        algorithm=job.algorithm,
        model=job.model,
        spec=_spec_summary(job.spec),
        metadata=job.job_metadata,
        progress={"step": job.progress_step, "total_steps": job.total_steps},
        latest_metrics={k: v["value"] for k, v in (job.latest_metrics or {}).items()},
        error=error,
        attempts=job.attempts,
        queue=job.queue,
    )


def _spec_summary(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec a GET or list answers with: inline rows become their count (the worker gets them all).

    The training dataset and the evaluation dataset alike.
    """
    summary = {**spec, "dataset": _rows_counted(spec.get("dataset") or {})}
    evaluation = spec.get("evaluation")
    if isinstance(evaluation, dict) and isinstance(evaluation.get("dataset"), dict):
        summary["evaluation"] = {**evaluation, "dataset": _rows_counted(evaluation["dataset"])}
    return summary


def _rows_counted(dataset: dict[str, Any]) -> dict[str, Any]:
    if dataset.get("rows") is None:
        return dataset
    return {**{k: v for k, v in dataset.items() if k != "rows"}, "inline_rows": len(dataset["rows"])}


def find_idempotent(session: Session, tenant_id: str, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))


def insert_job(
    session: Session,
    *,
    tenant_id: str,
    spec_public: dict[str, Any],
    secret_headers: str | None,
    queue: str,
    total_steps: int,
    idempotency_key: str | None,
    request_hash: str | None,
) -> Job:
    now = utcnow()
    job = Job(
        id=new_id("job"),
        tenant_id=tenant_id,
        status=S.QUEUED.value,
        algorithm=spec_public["algorithm"],
        model=spec_public["model"]["name_or_path"] or spec_public["model"]["checkpoint"],
        queue=queue,
        spec=spec_public,
        secret_headers=secret_headers,
        job_metadata=spec_public.get("metadata") or {},
        total_steps=total_steps,
        progress_step=0,
        latest_metrics={},
        attempts=0,
        fence=0,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        enqueued_at=now,
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    session.add_all(JobMetadata(job_id=job.id, key=k, value=v) for k, v in job.job_metadata.items())
    session.flush()
    add_event(session, job.id, "status", "job queued", {"status": job.status})
    return job


# What counts against RLFT_MAX_ACTIVE_JOBS_PER_TENANT: every state that waits for or holds a worker.
ACTIVE = frozenset({S.VALIDATING, S.QUEUED}) | LEASED


def count_active_jobs(session: Session, tenant_id: str) -> int:
    """The tenant's active jobs, its row locked first (Postgres) so that concurrent creates count in turn.

    (On SQLite every writing transaction already holds the database's write lock.)
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())
    stmt = select(func.count()).where(Job.tenant_id == tenant_id, Job.status.in_([s.value for s in ACTIVE]))
    return session.scalar(stmt) or 0


def get_job(session: Session, tenant_id: str, job_id: str, *, lock: bool = False) -> Job:
    stmt = select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id)
    job = session.scalar(stmt.with_for_update() if lock else stmt)
    if job is None:
        # Another tenant's job answers exactly like a missing one: existence is not disclosed.
        raise NotFound("job", job_id)
    return job


def list_jobs(
    session: Session,
    tenant_id: str,
    *,
    status: str | None,
    limit: int,
    after: str | None,
    metadata: dict[str, str],
) -> tuple[list[Job], bool]:
    """Newest first; ``after`` is the last id of the previous page (ids are time-ordered)."""
    stmt: Select[tuple[Job]] = select(Job).where(Job.tenant_id == tenant_id)
    if status:
        stmt = stmt.where(Job.status == status)
    if after:
        stmt = stmt.where(Job.id < after)
    for key, value in metadata.items():
        md = select(JobMetadata.job_id).where(JobMetadata.key == key, JobMetadata.value == value)
        stmt = stmt.where(Job.id.in_(md))
    rows = list(session.scalars(stmt.order_by(Job.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def file_for_tenant(session: Session, tenant_id: str, file_id: str) -> File | None:
    return session.scalar(select(File).where(File.id == file_id, File.tenant_id == tenant_id))


def get_file(session: Session, tenant_id: str, file_id: str) -> File:
    f = file_for_tenant(session, tenant_id, file_id)
    if f is None:
        raise NotFound("file", file_id)
    return f


# --- state changes ---


def set_status(session: Session, job: Job, status: JobStatus, message: str, **fields: Any) -> None:
    """Change the status (409 unless the state table allows it), stamp the times and append the ``status``
    event SSE subscribers wait for."""
    states.check(S(job.status), status, job.id)
    now = utcnow()
    job.status = status.value
    job.updated_at = now
    for name, value in fields.items():
        setattr(job, name, value)
    if status in TERMINAL or status is S.PAUSED:
        job.lease_owner = None
        job.lease_expires_at = None
    if status in TERMINAL:
        job.finished_at = now
    data: dict[str, Any] = {"status": status.value}
    if job.error_code:
        data["error"] = {"code": job.error_code, "message": job.error_message}
    level = "error" if status is S.FAILED else "info"
    add_event(session, job.id, "status", message, data, level=level)


def apply(session: Session, job: Job, action: Action, message: str | None = None, **fields: Any) -> bool:
    """Make ``action``'s move from the job's state (service/states.py); False when it was a no-op."""
    move = states.move(action, S(job.status), job.id)
    if move is None:
        return False
    set_status(session, job, move.target, message or move.message, **fields)
    return True


def cancel(session: Session, job: Job) -> None:
    apply(session, job, Action.CANCEL)


def pause(session: Session, job: Job) -> None:
    apply(session, job, Action.PAUSE)


def resume(session: Session, job: Job, enqueue: Callable[[str, str], Any]) -> None:
    if S(job.status) is S.PAUSED:
        apply(session, job, Action.RESUME, enqueued_at=utcnow())
        schedule_enqueue(session, job, enqueue)
    else:
        apply(session, job, Action.RESUME)


def schedule_enqueue(session: Session, job: Job, enqueue: Callable[[str, str], Any]) -> None:
    from service.db import after_commit

    job_id, queue = job.id, job.queue
    after_commit(session, lambda: enqueue(job_id, queue))


def count_by_status(session: Session) -> dict[str, int]:
    return dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
