"""A job's events, metrics and samples: what workers report and clients read back."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, Select, func, or_, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from service import notify
from service.models import Event, Job, Metric, Sample, utcnow
from service.schemas import EventIn, MetricPoint, SampleIn


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
    session: Session, job_id: str, step: int | None, limit: int, split: str = "train"
) -> tuple[int | None, list[Sample]]:
    """Samples of ``split`` at ``step``, or at the newest step that has any."""
    of_split = (Sample.job_id == job_id, Sample.split == split)
    if step is None:
        step = session.scalar(select(func.max(Sample.step)).where(*of_split))
        if step is None:
            return None, []
    stmt = select(Sample).where(*of_split, Sample.step == step).order_by(Sample.index).limit(limit)
    return step, list(session.scalars(stmt))
