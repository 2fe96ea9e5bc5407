"""The database: SQLAlchemy 2 typed models. The service is the only code that touches it.

Public ids are prefixed and time-ordered (``job_0193…``) so that a list sorted by id is sorted by creation
time and the ``after`` cursor of ``GET /v1/jobs`` is just an id. Events use an integer id: it is the SSE
cursor. Constraint names follow a naming convention so that Alembic migrations stay reviewable.
"""

from __future__ import annotations

import enum
import secrets
import time
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class JobStatus(str, enum.Enum):
    VALIDATING = "validating"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    PAUSING = "pausing"
    PAUSED = "paused"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
# States in which a worker holds a lease and may write (with its fence).
LEASED = frozenset({JobStatus.RUNNING, JobStatus.CANCELLING, JobStatus.PAUSING})


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id(prefix: str) -> str:
    """``prefix_`` + 12 hex digits of milliseconds + 12 random hex digits: unique and time-ordered."""
    return f"{prefix}_{int(time.time() * 1000):012x}{secrets.token_hex(6)}"


def id_pattern(prefix: str) -> str:
    """The shape of every id :func:`new_id` makes with ``prefix``; path parameters are checked against it."""
    return f"^{prefix}_[0-9a-f]{{24}}$"


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both dialects (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use service.models.utcnow()")
        return value.astimezone(timezone.utc) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


def _no_nul(value: Any) -> Any:
    """Strings with NUL replaced by U+FFFD, through dicts and lists. Postgres text and JSON refuse NUL, and
    a byte-level model (or a user's dataset) can emit it; SQLite would keep it. Both now store the same."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, dict):
        return {_no_nul(k): _no_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nul(v) for v in value]
    return value


class SafeText(TypeDecorator[str]):
    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return _no_nul(value)


class SafeJSON(TypeDecorator[Any]):
    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return _no_nul(value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: SafeJSON(), list[Any]: SafeJSON()}


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """A tenant's key, stored as a sha256 (keys are 256-bit random, so a slow hash buys nothing)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class File(Base):
    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(40))
    location: Mapped[str] = mapped_column(SafeText)
    bytes: Mapped[int] = mapped_column(BigInteger)
    rows: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_jobs_tenant_id_id", "tenant_id", "id"),
        Index("ix_jobs_status_lease_expires_at", "status", "lease_expires_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(20))
    algorithm: Mapped[str] = mapped_column(String(20))
    model: Mapped[str] = mapped_column(SafeText)
    queue: Mapped[str] = mapped_column(String(100))
    # The spec as clients see it (header values masked); the headers live encrypted beside it.
    spec: Mapped[dict[str, Any]]
    secret_headers: Mapped[str | None] = mapped_column(SafeText)
    job_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", SafeJSON)
    progress_step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer)
    latest_metrics: Mapped[dict[str, Any]] = mapped_column(SafeJSON, default=dict)
    error_code: Mapped[str | None] = mapped_column(String(80))
    error_message: Mapped[str | None] = mapped_column(SafeText)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    fence: Mapped[int] = mapped_column(BigInteger, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    enqueued_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class JobMetadata(Base):
    """One row per metadata key, so that ``metadata.k=v`` filters are plain indexed SQL on both dialects."""

    __tablename__ = "job_metadata"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[str] = mapped_column(SafeText)

    __table_args__ = (Index("ix_job_metadata_key_value", "key", "value"),)


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (
        UniqueConstraint("job_id", "step", "name"),
        # Chart reads (one name's series, in step order; downsampled per name): an index-only scan on
        # Postgres, which carries the value in the index.
        Index("ix_metrics_job_id_name_step", "job_id", "name", "step", postgresql_include=["value"]),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    value: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Event(Base):
    """A job event; ``id`` only grows, and is the cursor of polling and of SSE (``Last-Event-ID``).

    Every writer of a job's events holds that job's row lock (``FOR UPDATE``; SQLite serialises all
    writers), so one job's events become visible in id order and a reader never skips a later-committed
    smaller id.
    """

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    level: Mapped[str] = mapped_column(String(10))
    type: Mapped[str] = mapped_column(String(20))
    message: Mapped[str] = mapped_column(SafeText)
    data: Mapped[dict[str, Any] | None] = mapped_column(SafeJSON)


class Sample(Base):
    __tablename__ = "samples"
    # Also the index of reads by (job, split, step): eval samples number from 0 per (step, split).
    __table_args__ = (UniqueConstraint("job_id", "split", "step", "index"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    index: Mapped[int] = mapped_column(Integer)
    group: Mapped[int | None] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(SafeText)
    completion: Mapped[str] = mapped_column(SafeText)
    reward: Mapped[float | None] = mapped_column(Float)
    label: Mapped[Any] = mapped_column(SafeJSON, nullable=True)
    error: Mapped[str | None] = mapped_column(SafeText)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The reward's named parts: {grader or endpoint name: value}.
    components: Mapped[dict[str, float] | None] = mapped_column(SafeJSON, nullable=True)
    # "train" or "eval" (issue 15: held-out evaluation samples).
    split: Mapped[str] = mapped_column(String(10), server_default="train", default="train")


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    location: Mapped[str] = mapped_column(SafeText)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    files: Mapped[list[Any]] = mapped_column(SafeJSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(SafeJSON)
    best: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Retention (issue 15): set when the checkpoint is let go; from then on downloads answer 410. Its files
    # leave the artifact store once no download holds a live lease on it (then ``purged_at`` is set).
    deleted_at: Mapped[datetime | None]
    purged_at: Mapped[datetime | None]


class CheckpointDownload(Base):
    """A download in progress: its lease keeps the checkpoint's files in the store until it ends or expires.

    The archive stream refreshes ``expires_at`` while it runs; a client that vanished lets it run out.
    """

    __tablename__ = "checkpoint_downloads"
    __table_args__ = (
        Index("ix_checkpoint_downloads_checkpoint_id_expires_at", "checkpoint_id", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    checkpoint_id: Mapped[str] = mapped_column(ForeignKey("checkpoints.id", ondelete="CASCADE"))
    expires_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
