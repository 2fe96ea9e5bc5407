"""Pushed event streams: a committed event batch wakes the SSE subscribers of its job.

The database stays the source of truth: a wake-up carries only a job id, and a woken subscriber reads the
events after its own cursor (so ``Last-Event-ID`` and several API processes keep working). What travels:

- Postgres: each transaction that adds events runs ``pg_notify(CHANNEL, job_id)`` once per job; Postgres
  delivers it at commit (never for a rollback). One LISTEN connection per API process (:class:`PgListener`)
  hands the ids to that process's :class:`EventBus`, which wakes the subscribers of those jobs. While the
  LISTEN connection is down, subscribers poll; when it comes back, every subscriber reads once, so nothing
  written in between is lost.
- SQLite: a commit wakes the subscribers of the same process at once; subscribers also poll, because
  another process (a second API on the same file) cannot wake them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

from prometheus_client import Gauge
from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

log = logging.getLogger(__name__)
CHANNEL = "rlft_events"
# Job ids with events added in the session's open transaction.
_PENDING = "rlft_event_jobs"
# How long a dropped LISTEN connection waits before it connects again (doubling up to the last).
RECONNECT_S = (0.1, 0.5, 1.0, 2.0, 5.0)


def mark(session: Session, job_id: str) -> None:
    """Record that the session's transaction adds events of ``job_id`` (crud.add_event calls this)."""
    session.info.setdefault(_PENDING, set()).add(job_id)


class Subscription:
    """One SSE stream's wake-up flag. Clear it BEFORE reading the database, then wait on it: a commit
    that lands during the read sets it again, so no event is left unread until the next one."""

    def __init__(self) -> None:
        self._flag = asyncio.Event()

    def clear(self) -> None:
        self._flag.clear()

    def set(self) -> None:
        self._flag.set()

    async def wait(self, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._flag.wait(), timeout)


class EventBus:
    """The in-process fan-out: job id → that process's subscribers. Publish from any thread."""

    def __init__(self, gauge: Gauge | None = None) -> None:
        self._subscribers: dict[str, set[Subscription]] = {}
        self._gauge = gauge
        self._loop: asyncio.AbstractEventLoop | None = None
        # True while a LISTEN connection delivers every commit of every process: subscribers need not poll.
        self.live = False

    @property
    def subscribers(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    @contextlib.contextmanager
    def subscribe(self, job_id: str) -> Iterator[Subscription]:
        """Subscribe before the first read: a commit between that read and the subscription is not lost."""
        self._loop = asyncio.get_running_loop()
        sub = Subscription()
        self._subscribers.setdefault(job_id, set()).add(sub)
        if self._gauge is not None:
            self._gauge.inc()
        try:
            yield sub
        finally:
            if self._gauge is not None:
                self._gauge.dec()
            subs = self._subscribers.get(job_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subscribers[job_id]

    def wake(self, job_ids: Iterable[str]) -> None:
        """Wake the subscribers of ``job_ids`` (call on the event loop)."""
        for job_id in job_ids:
            for sub in self._subscribers.get(job_id, ()):
                sub.set()

    def wake_all(self) -> None:
        for subs in self._subscribers.values():
            for sub in subs:
                sub.set()

    def publish(self, job_ids: Iterable[str]) -> None:
        """Wake from another thread (a request handler's commit runs in the thread pool)."""
        loop, ids = self._loop, list(job_ids)
        if loop is None or loop.is_closed() or not ids:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is listening
            loop.call_soon_threadsafe(self.wake, ids)


class _Read:
    __slots__ = ("started", "task")

    def __init__(self) -> None:
        self.started = False
        self.task: asyncio.Future[Any] | None = None


class SharedReads:
    """One database read for the streams of a job woken together (a commit wakes them all at once).

    A stream joins a read of the same (job, cursor) only while that read has not yet started its query:
    the query then begins after the stream cleared its wake-up flag, so it sees every commit that woke the
    stream. Reads run ``slots`` at a time, in the thread pool: woken streams must not take the threads and
    connections that requests need.
    """

    def __init__(self, slots: asyncio.Semaphore):
        self._slots = slots
        self._pending: dict[Any, _Read] = {}

    async def read(self, key: Any, fn: Callable[[], Any]) -> Any:
        entry = self._pending.get(key)
        if entry is None or entry.started:
            entry = _Read()
            entry.task = asyncio.ensure_future(self._run(entry, fn))
            self._pending[key] = entry
            entry.task.add_done_callback(lambda _t: self._forget(key, entry))
        assert entry.task is not None
        # Shielded: a stream whose client went away must not cancel the read the others wait for.
        return await asyncio.shield(entry.task)

    def _forget(self, key: Any, entry: _Read) -> None:
        if self._pending.get(key) is entry:
            del self._pending[key]

    async def _run(self, entry: _Read, fn: Callable[[], Any]) -> Any:
        def call() -> Any:
            entry.started = True
            return fn()

        async with self._slots:
            return await run_in_threadpool(call)


def install(factory: sessionmaker[Session], engine: Engine, bus: EventBus) -> None:
    """Notify on commit: pg_notify on Postgres (from any session of the process, whoever made it, so that
    no writer of events is forgotten), the local bus for sessions of ``factory`` on SQLite."""
    if not event.contains(Session, "before_commit", _pg_notify):
        event.listen(Session, "before_commit", _pg_notify)
        event.listen(Session, "after_rollback", _forget)
    if engine.dialect.name != "postgresql":
        event.listen(factory, "after_commit", lambda session: bus.publish(session.info.pop(_PENDING, ())))


def _forget(session: Session) -> None:
    session.info.pop(_PENDING, None)


def _pg_notify(session: Session) -> None:
    # Inside the transaction: Postgres sends it when (and only if) the transaction commits, after the rows
    # are visible to other sessions; one notification per job and transaction (duplicates fold).
    if _PENDING not in session.info or session.get_bind().dialect.name != "postgresql":
        return
    for job_id in sorted(session.info.pop(_PENDING)):
        session.execute(text("SELECT pg_notify(:channel, :job)"), {"channel": CHANNEL, "job": job_id})


class PgListener:
    """One LISTEN connection per API process, reconnecting when dropped; feeds the process's bus."""

    def __init__(self, engine: Engine, bus: EventBus):
        url = engine.url.set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)
        self._bus = bus
        # Named so that an operator (or a test) can find this process's LISTEN connection in pg_stat_activity.
        self.application_name = "rlft-listen-" + secrets.token_hex(4)
        self.connects = 0

    async def run_forever(self) -> None:
        attempt = 0
        while True:
            try:
                async for _ in self._listen():
                    attempt = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a dropped or refused connection: poll, then retry
                log.warning("the LISTEN connection dropped (%s); streams poll until it is back", exc)
            self._bus.live = False
            self._bus.wake_all()
            await asyncio.sleep(RECONNECT_S[min(attempt, len(RECONNECT_S) - 1)])
            attempt += 1

    async def _listen(self) -> AsyncIterator[None]:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(
            self._conninfo,
            autocommit=True,
            application_name=self.application_name,
            # A peer that vanished without a FIN (a cut network) is noticed too, not only a closed socket.
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
        )
        async with conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            self.connects += 1
            self._bus.live = True
            # Whatever committed while no connection listened: every subscriber reads once.
            self._bus.wake_all()
            yield
            async for note in conn.notifies():
                self._bus.wake((note.payload,))
                yield


def start(app_state: Any) -> asyncio.Task | None:
    """The LISTEN task of a Postgres API (None on SQLite, whose subscribers poll)."""
    engine: Engine = app_state.engine
    if engine.dialect.name != "postgresql":
        return None
    app_state.listener = PgListener(engine, app_state.event_bus)
    return asyncio.create_task(app_state.listener.run_forever())
