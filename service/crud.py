"""Database functions: every read and write of the API and of the reaper goes through here.

Nothing here commits: the session dependency (deps.py) or ``db.session_scope`` commits on success and then
runs the after-commit callbacks (enqueueing a job id). Row locks (``FOR UPDATE`` on Postgres; SQLite
transactions start ``IMMEDIATE``) serialise state changes of one job between the API, workers and reaper.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, Select, and_, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from rlcore.errors import ErrorCode
from service import notify
from service.errors import Conflict, NotFound
from service.models import (
    LEASED,
    TERMINAL,
    Checkpoint,
    Event,
    File,
    Job,
    JobMetadata,
    JobStatus,
    Metric,
    Sample,
    Tenant,
    new_id,
    utcnow,
)
from service.schemas import (
    CheckpointRegister,
    EventIn,
    FinishRequest,
    JobPublic,
    MetricPoint,
    SampleIn,
)

S = JobStatus

# --- jobs: create, read, list ---


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
    """The spec a GET or list answers with: inline rows become their count (the worker gets them all)."""
    dataset = spec.get("dataset") or {}
    if dataset.get("rows") is None:
        return spec
    summary = {k: v for k, v in dataset.items() if k != "rows"}
    return {**spec, "dataset": {**summary, "inline_rows": len(dataset["rows"])}}


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


# --- state changes asked by the tenant ---


def set_status(session: Session, job: Job, status: JobStatus, message: str, **fields: Any) -> None:
    """Change the status, stamp the times and append the ``status`` event SSE subscribers wait for."""
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


def cancel(session: Session, job: Job) -> None:
    current = S(job.status)
    if current in (S.CANCELLED, S.CANCELLING):
        return  # a repeated cancel is not an error
    if current in TERMINAL:
        raise Conflict(
            f"job {job.id} already {current.value}; it cannot be cancelled", code="illegal_transition"
        )
    if current in LEASED:
        # A worker holds it: its next heartbeat answers "cancel", then it finishes as cancelled.
        set_status(session, job, S.CANCELLING, "cancel requested")
    else:
        set_status(session, job, S.CANCELLED, "job cancelled")


def pause(session: Session, job: Job) -> None:
    current = S(job.status)
    if current in (S.PAUSED, S.PAUSING):
        return
    if current is S.RUNNING:
        set_status(session, job, S.PAUSING, "pause requested")
    elif current in (S.QUEUED, S.VALIDATING):
        set_status(session, job, S.PAUSED, "job paused before it started")
    else:
        raise Conflict(
            f"job {job.id} is {current.value}; only a queued or running job can be paused",
            code="illegal_transition",
        )


def resume(session: Session, job: Job, enqueue: Callable[[str, str], Any]) -> None:
    current = S(job.status)
    if current is S.PAUSING:
        # The worker has not stopped yet: withdrawing the request is enough.
        set_status(session, job, S.RUNNING, "pause withdrawn")
    elif current is S.PAUSED:
        set_status(session, job, S.QUEUED, "job resumed", enqueued_at=utcnow())
        schedule_enqueue(session, job, enqueue)
    else:
        raise Conflict(
            f"job {job.id} is {current.value}; only a paused job can be resumed", code="illegal_transition"
        )


def schedule_enqueue(session: Session, job: Job, enqueue: Callable[[str, str], Any]) -> None:
    from service.db import after_commit

    job_id, queue = job.id, job.queue
    after_commit(session, lambda: enqueue(job_id, queue))


# --- events, metrics, samples ---


def add_event(
    session: Session,
    job_id: str,
    type_: str,
    message: str,
    data: dict[str, Any] | None,
    *,
    level: str = "info",
) -> None:
    session.add(
        Event(job_id=job_id, type=type_, level=level, message=message, data=data, created_at=utcnow())
    )
    notify.mark(session, job_id)


def list_events(session: Session, job_id: str, after: int, limit: int) -> tuple[list[Event], bool]:
    stmt = select(Event).where(Event.job_id == job_id, Event.id > after).order_by(Event.id).limit(limit + 1)
    rows = list(session.scalars(stmt))
    return rows[:limit], len(rows) > limit


def list_metrics(
    session: Session,
    job_id: str,
    after_step: int | None,
    names: Sequence[str],
    limit: int,
    max_points: int | None = None,
) -> list[Row[tuple[int, str, float, datetime]]]:
    """Points in (step, name) order: columns only (no ORM objects), a chart of 100k points reads fast.

    With ``max_points``, each name's series longer than that is downsampled (:func:`_downsampled`).
    """
    stmt = select(Metric.step, Metric.name, Metric.value, Metric.created_at).where(Metric.job_id == job_id)
    if after_step is not None:
        stmt = stmt.where(Metric.step > after_step)
    if names:
        stmt = stmt.where(Metric.name.in_(names))
    if max_points is not None:
        stmt = _downsampled(stmt.subquery(), max_points)
        return list(session.execute(stmt.limit(limit)).all())
    return list(session.execute(stmt.order_by(Metric.step, Metric.name).limit(limit)).all())


def _downsampled(points: Any, max_points: int) -> Select:
    """At most ``max_points`` points per name, the extremes kept: min-max bucketing.

    A series of n > max_points points is cut into (max_points - 2) // 2 buckets of equal step range; each
    bucket keeps its lowest and its highest point (a spike or a dip always survives, unlike averaging
    or taking every k-th point), and the series keeps its first and last points. Shorter series come whole.
    Window functions, so that the database (not the API process) scans the 100k rows.
    """
    buckets = max(1, (max_points - 2) // 2)
    by_name = {"partition_by": points.c.name}
    ranged = select(
        points,
        func.count().over(**by_name).label("n"),
        func.min(points.c.step).over(**by_name).label("lo"),
        func.max(points.c.step).over(**by_name).label("hi"),
    ).subquery()
    bucket = (ranged.c.step - ranged.c.lo) * buckets // (ranged.c.hi - ranged.c.lo + 1)
    in_bucket = {"partition_by": (ranged.c.name, bucket)}
    # One sort: by value, so the first row of a bucket is its lowest point and the last its highest.
    ranked = select(
        ranged,
        func.row_number().over(**in_bucket, order_by=(ranged.c.value, ranged.c.step)).label("rank"),
        func.count().over(**in_bucket).label("size"),
    ).subquery()
    c = ranked.c
    keep = or_(c.n <= max_points, c.rank == 1, c.rank == c.size, c.step == c.lo, c.step == c.hi)
    return select(c.step, c.name, c.value, c.created_at).where(keep).order_by(c.step, c.name)


def _insert_ignore(session: Session, model: type, rows: list[dict[str, Any]], keys: list[str]) -> Any:
    """INSERT … ON CONFLICT DO NOTHING on either dialect, one batched statement; returns the inserted rows'
    ``keys``. On the table, not the mapped class: Core skips the ORM's per-row bookkeeping."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    table = model.__table__  # type: ignore[attr-defined]
    stmt = dialect.insert(table).on_conflict_do_nothing().returning(*(table.c[k] for k in keys))
    return session.execute(stmt, rows).all()


# One statement of three arrays, whatever the batch size: Postgres parses and plans it once per connection,
# where a multi-row VALUES list is a new, long statement for each batch size (issue 16: 3x the points/s).
_PG_INSERT_METRICS = text(
    "INSERT INTO metrics (job_id, step, name, value, created_at) "
    "SELECT :job_id, p.step, p.name, p.value, :now FROM unnest("
    "CAST(:steps AS integer[]), CAST(:names AS varchar[]), CAST(:values AS double precision[])"
    ") AS p(step, name, value) "
    "ON CONFLICT (job_id, step, name) DO NOTHING RETURNING step, name, value"
)


def _insert_metrics(
    session: Session, job_id: str, now: datetime, rows: list[dict[str, Any]]
) -> Sequence[Any]:
    """Insert the points, a repeated (step, name) ignored; returns the inserted (step, name, value)."""
    if session.get_bind().dialect.name != "postgresql":
        return _insert_ignore(session, Metric, rows, ["step", "name", "value"])
    arrays = {
        "steps": [r["step"] for r in rows],
        "names": [r["name"] for r in rows],
        "values": [r["value"] for r in rows],
    }
    return session.execute(_PG_INSERT_METRICS, {"job_id": job_id, "now": now, **arrays}).all()


def ingest_metrics(session: Session, job: Job, points: Iterable[MetricPoint]) -> int:
    now = utcnow()
    # JSON cannot carry NaN/inf back to readers; such points are dropped, not stored.
    rows = [
        {"job_id": job.id, "step": p.step, "name": p.name, "value": p.value, "created_at": now}
        for p in points
        if math.isfinite(p.value)
    ]
    if not rows:
        return 0
    inserted = _insert_metrics(session, job.id, now, rows)
    by_step: dict[int, dict[str, float]] = {}
    latest = dict(job.latest_metrics or {})
    for step, name, value in inserted:
        by_step.setdefault(step, {})[name] = value
        if name not in latest or latest[name]["step"] <= step:
            latest[name] = {"step": step, "value": value}
    # One compact event per step, so that SSE subscribers see new points without a second query.
    for step in sorted(by_step):
        add_event(session, job.id, "metrics", f"step {step}", {"step": step, "metrics": by_step[step]})
    if by_step:
        job.latest_metrics = latest
        job.progress_step = max(job.progress_step, max(by_step))
        job.updated_at = now
    return len(inserted)


def ingest_events(session: Session, job: Job, events: Iterable[EventIn]) -> int:
    count = 0
    for e in events:
        add_event(session, job.id, e.type, e.message, e.data, level=e.level)
        count += 1
    return count


def ingest_samples(session: Session, job: Job, samples: Iterable[SampleIn]) -> int:
    now = utcnow()
    rows = [{"job_id": job.id, "created_at": now, **s.model_dump()} for s in samples]
    if not rows:
        return 0
    return len(_insert_ignore(session, Sample, rows, ["id"]))


def list_samples(
    session: Session, job_id: str, step: int | None, limit: int
) -> tuple[int | None, list[Sample]]:
    """Samples of ``step``, or of the newest step that has any."""
    if step is None:
        step = session.scalar(select(func.max(Sample.step)).where(Sample.job_id == job_id))
        if step is None:
            return None, []
    stmt = (
        select(Sample).where(Sample.job_id == job_id, Sample.step == step).order_by(Sample.index).limit(limit)
    )
    return step, list(session.scalars(stmt))


# --- checkpoints ---


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


# --- the worker's side: claim, fence, heartbeat, finish ---


def claim(session: Session, job_id: str, worker_id: str, lease_seconds: int) -> Job:
    """Compare-and-set queued → running; bumps the fence so that any older holder's writes are refused.

    A claim repeated by the worker that holds a live lease on the job (its first answer was lost) answers
    the same claim again: same fence, same attempt, no new event. Any other claim of a leased job is 409.
    """
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == S.QUEUED.value)
        .values(
            status=S.RUNNING.value,
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
    set_status(session, job, S.FAILED, f"job failed: {code}", error_code=code, error_message=message)


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
        set_status(
            session,
            job,
            S.FAILED,
            f"job failed: {error.code}",
            error_code=error.code,
            error_message=error.message,
        )
    elif target is S.PAUSED:
        set_status(session, job, S.PAUSED, "job paused")
    elif target is S.CANCELLED:
        set_status(session, job, S.CANCELLED, "job cancelled")
    else:
        set_status(session, job, S.SUCCEEDED, "job succeeded")


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
    if current is S.CANCELLING:
        set_status(session, job, S.CANCELLED, "job cancelled (its worker stopped answering)")
    elif current is S.PAUSING:
        set_status(session, job, S.PAUSED, "job paused (its worker stopped answering)")
    elif job.attempts < max_attempts:
        set_status(
            session,
            job,
            S.QUEUED,
            f"lease of {job.lease_owner} expired; job requeued",
            lease_owner=None,
            lease_expires_at=None,
            enqueued_at=utcnow(),
        )
        schedule_enqueue(session, job, enqueue)
    else:
        set_status(
            session,
            job,
            S.FAILED,
            f"job failed: {ErrorCode.WORKER_LOST_REPEATEDLY}",
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


def count_by_status(session: Session) -> dict[str, int]:
    return dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
