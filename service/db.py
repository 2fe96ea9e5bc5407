"""Engine, sessions and migrations. Postgres in production; a SQLite file under ``data_dir`` by default."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from rlft.settings import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"


def make_engine(database_url: str, *, read_only: bool = False) -> Engine:
    """An engine; on SQLite, write transactions begin IMMEDIATE (``read_only`` ones stay deferred).

    A deferred SQLite transaction that reads and then writes fails with "database is locked" when
    another writer committed in between; taking the write lock up front makes it wait instead. Readers
    that never write (SSE polling, metrics scrapes) keep deferred transactions and never block writers.
    """
    if database_url.startswith("sqlite"):
        _ensure_sqlite_dir(database_url)
        engine = create_engine(database_url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        begin = "BEGIN" if read_only else "BEGIN IMMEDIATE"
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql(begin))
        return engine
    return create_engine(database_url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _ensure_sqlite_dir(database_url: str) -> None:
    path = database_url.split(":///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets SSE readers poll while a worker writes; busy_timeout turns lock contention into waiting.
    # pysqlite's own implicit BEGIN is turned off: the engine's "begin" listener emits ours.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
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
        callback()


def alembic_config(database_url: str) -> Any:
    from alembic.config import Config

    cfg = Config(str(MIGRATIONS_DIR.parent / "alembic.ini"))
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
