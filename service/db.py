"""Engine, sessions and migrations. Postgres in production; a SQLite file under ``data_dir`` by default."""

from __future__ import annotations

import functools
import logging
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from rlft_contracts.settings import Settings

log = logging.getLogger(__name__)
MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"


def make_engine(
    database_url: str,
    *,
    read_only: bool = False,
    pool_size: int = 5,
    max_overflow: int = 10,
    wait_s: float = 30.0,
) -> Engine:
    """An engine; on SQLite, write transactions begin IMMEDIATE (``read_only`` ones stay deferred).

    A deferred SQLite transaction that reads and then writes fails with "database is locked" when
    another writer committed in between; taking the write lock up front makes it wait instead. Readers
    that never write (SSE polling, metrics scrapes) keep deferred transactions and never block writers.

    ``wait_s`` bounds every wait for the database: a pooled connection, the SQLite write lock, a new
    Postgres connection. The API passes a short one (``RLFT_DB_WAIT_S``) so that an overloaded database
    becomes a quick 503, and sizes the pool against the requests it lets in (service/app.py).
    """
    pool = {"pool_size": pool_size, "max_overflow": max_overflow, "pool_timeout": wait_s}
    if database_url.startswith("sqlite"):
        _ensure_sqlite_dir(database_url)
        connect_args = {"check_same_thread": False, "timeout": wait_s}
        engine = create_engine(database_url, connect_args=connect_args, **pool)
        event.listen(engine, "connect", functools.partial(_sqlite_pragmas, busy_ms=int(wait_s * 1000)))
        begin = "BEGIN" if read_only else "BEGIN IMMEDIATE"
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql(begin))
        return engine
    connect_args = {"connect_timeout": max(1, math.ceil(wait_s))}
    return create_engine(database_url, pool_pre_ping=True, connect_args=connect_args, **pool)


def _ensure_sqlite_dir(database_url: str) -> None:
    path = database_url.split(":///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any, *, busy_ms: int) -> None:
    # WAL lets SSE readers poll while a worker writes; busy_timeout turns lock contention into waiting.
    # pysqlite's own implicit BEGIN is turned off: the engine's "begin" listener emits ours.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={busy_ms}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run ``callback`` once the session's transaction has committed (e.g. enqueue a job id).

    The session dependency runs these after its commit; nothing runs when the transaction rolls back,
    so a broker message never names a job that does not exist.
    """
    session.info.setdefault("after_commit", []).append(callback)


def run_after_commit(session: Session) -> list[Callable[[], None]]:
    """Pop the callbacks registered with :func:`after_commit` (call them after ``commit()``)."""
    return session.info.pop("after_commit", [])


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success, rolls back on error, then runs the after-commit callbacks."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        session.info.pop("after_commit", None)
        raise
    finally:
        session.close()
    for callback in run_after_commit(session):
        # The transaction is committed: a failing callback must not turn that into an error answer (the
        # client would retry a create that exists). A lost enqueue is re-sent by the reconciler.
        try:
            callback()
        except Exception:  # noqa: BLE001
            log.exception("an after-commit callback failed; the reconciler will repair what it skipped")


def alembic_config(database_url: str) -> Any:
    from alembic.config import Config

    # stdout as it is now: alembic's default is the sys.stdout of the moment it was first imported, which
    # may be a stream closed since (a test's captured output, a CLI's redirected one).
    cfg = Config(str(MIGRATIONS_DIR.parent / "alembic.ini"), stdout=sys.stdout)
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # '%' is ConfigParser's interpolation character; URLs with escaped passwords contain it.
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def migrate(settings: Settings, revision: str = "head") -> None:
    """Upgrade the database named by ``settings.database_url`` to ``revision`` (alembic upgrade head)."""
    from alembic import command

    if settings.is_sqlite:
        _ensure_sqlite_dir(settings.database_url)
    command.upgrade(alembic_config(settings.database_url), revision)
