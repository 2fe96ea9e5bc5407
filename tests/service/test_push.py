"""Pushed event streams: a commit on one API process reaches a subscriber on another, idle
subscribers cost no queries, and neither a dropped client connection nor a dropped LISTEN connection loses
an event. Real uvicorn servers, real Postgres (the tests that need LISTEN/NOTIFY skip without it)."""

from __future__ import annotations

import functools
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from rlft_contracts.settings import Settings
from service.app import create_app
from service.keys import create_api_key
from tests.service.conftest import WORKER, migrated_settings
from tests.service.test_sse import post_metric, read_events, start_job
from tests.support.servers import ServerThread
from tests.support.stacks import api_process
from tests.support.waiting import wait_until

HANG_S = 60  # "did not hang": far above what any of these takes on a loaded machine
_wait_until = functools.partial(wait_until, timeout_s=HANG_S, every_s=0.02)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pg_settings(tmp_path: Path, pg_schema_url: str) -> Settings:
    return migrated_settings(tmp_path, pg_schema_url)


@pytest.fixture
def carol(pg_settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_api_key(pg_settings, 'carol')}"}


class Reader:
    """Reads an SSE stream in a thread, keeping every event with an id, until the server ends it or ``until``
    holds: then the reader drops the connection itself (as a client that goes away does)."""

    def __init__(self, url: str, headers: dict[str, str], until=None):
        self.events: list[dict] = []
        self.ended = threading.Event()
        self._url, self._headers, self._until = url, headers, until
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with httpx.stream("GET", self._url, headers=self._headers, timeout=HANG_S) as r:
                assert r.status_code == 200
                for ev in read_events(r):
                    if "id" in ev:
                        self.events.append(ev)
                    if self._until is not None and self._until(self):
                        return
        finally:
            self.ended.set()

    def steps(self) -> list[int]:
        return [json.loads(e["data"])["data"]["step"] for e in self.events if e["event"] == "metrics"]

    def wait_for(self, predicate, what: str) -> None:
        _wait_until(lambda: predicate(self), what)


def _finish(base: str, jid: str, fence: int) -> None:
    body = {"fence": fence, "status": "succeeded"}
    httpx.post(f"{base}/internal/v1/jobs/{jid}/finish", json=body, headers=WORKER).raise_for_status()


def test_a_subscriber_on_process_a_gets_an_event_written_through_process_b(
    pg_settings: Settings, carol: dict
) -> None:
    with api_process(pg_settings) as a, api_process(pg_settings) as b:
        jid, fence = start_job(b, carol)
        reader = Reader(f"{a}/v1/jobs/{jid}/events/stream", carol)
        reader.wait_for(lambda r: len(r.events) == 2, "the queued and claimed events")
        sent = post_metric(b, jid, fence, 1)
        reader.wait_for(lambda r: r.steps() == [1], "the metrics event on process A")
        lag = time.perf_counter() - sent
        _finish(b, jid, fence)
        reader.ended.wait(HANG_S)
    assert lag < 1.0, f"cross-process delivery took {lag:.3f} s"
    assert [e["event"] for e in reader.events] == ["status", "status", "metrics", "status"]


def test_idle_subscribers_cause_no_queries(pg_settings: Settings, carol: dict) -> None:
    app = create_app(pg_settings)
    statements: list[str] = []
    for engine in {app.state.engine, app.state.read_engine, app.state.worker_engine}:
        sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    with ServerThread(app) as server:
        _wait_until(lambda: app.state.event_bus.live, "the LISTEN connection")
        jid, fence = start_job(server.url, carol)
        readers = [Reader(f"{server.url}/v1/jobs/{jid}/events/stream", carol) for _ in range(20)]
        for r in readers:
            r.wait_for(lambda r: len(r.events) == 2, "the catch-up read")
        _wait_until(lambda: app.state.event_bus.subscribers == 20, "20 subscribers")
        statements.clear()
        time.sleep(1.5)  # seven poll intervals of the polling design
        idle = list(statements)
        post_metric(server.url, jid, fence, 1)
        for r in readers:
            r.wait_for(lambda r: r.steps() == [1], "the pushed metrics event")
        event_reads = [s for s in statements if "FROM events" in s]
        _finish(server.url, jid, fence)
        for r in readers:
            assert r.ended.wait(HANG_S)
    assert idle == [], f"{len(idle)} statements while 20 subscribers were idle: {idle[:3]}"
    assert len(event_reads) == 1  # the 20 streams woken by one commit shared one read


def test_last_event_id_after_a_dropped_connection_loses_nothing(settings: Settings, alice: dict) -> None:
    with ServerThread(create_app(settings)) as server:
        base = server.url
        jid, fence = start_job(base, alice)
        url = f"{base}/v1/jobs/{jid}/events/stream"
        # The client's connection drops after step 2; the job goes on.
        first = Reader(url, alice, until=lambda r: r.steps() == [1, 2])
        post_metric(base, jid, fence, 1)
        post_metric(base, jid, fence, 2)
        assert first.ended.wait(HANG_S)
        for step in (3, 4, 5):
            post_metric(base, jid, fence, step)
        _finish(base, jid, fence)
        second = Reader(url, {**alice, "Last-Event-ID": first.events[-1]["id"]})
        assert second.ended.wait(HANG_S)
    ids = [int(e["id"]) for e in first.events + second.events]
    assert ids == sorted(set(ids))  # no duplicate, in order
    assert first.steps() + second.steps() == [1, 2, 3, 4, 5]
    assert json.loads(second.events[-1]["data"])["data"]["status"] == "succeeded"


def _terminate_listener(settings: Settings, application_name: str) -> int:
    admin = sa.create_engine(settings.database_url, poolclass=sa.NullPool)
    try:
        with admin.connect() as conn:
            query = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :name"
            return len(conn.execute(sa.text(query), {"name": application_name}).all())
    finally:
        admin.dispose()


def test_a_dropped_listen_connection_is_noticed_and_streams_resume_without_loss(
    pg_settings: Settings, carol: dict
) -> None:
    app = create_app(pg_settings)
    with ServerThread(app) as server:
        base = server.url
        listener = app.state.listener
        _wait_until(lambda: app.state.event_bus.live, "the LISTEN connection")
        jid, fence = start_job(base, carol)
        reader = Reader(f"{base}/v1/jobs/{jid}/events/stream", carol)
        post_metric(base, jid, fence, 1)
        reader.wait_for(lambda r: r.steps() == [1], "step 1")
        assert _terminate_listener(pg_settings, listener.application_name) == 1
        for step in (2, 3):  # written while the LISTEN connection is down or coming back
            post_metric(base, jid, fence, step)
        _wait_until(lambda: listener.connects == 2, "the LISTEN connection to come back")
        reader.wait_for(lambda r: r.steps() == [1, 2, 3], "steps 2 and 3")
        _wait_until(lambda: app.state.event_bus.live, "pushing again")
        post_metric(base, jid, fence, 4)  # pushed through the new connection
        reader.wait_for(lambda r: r.steps() == [1, 2, 3, 4], "step 4")
        _finish(base, jid, fence)
        assert reader.ended.wait(HANG_S)
    assert [e["event"] for e in reader.events][-1] == "status"
