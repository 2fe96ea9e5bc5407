"""Under real traffic: bursts answer 201/429/503 (never a 500, never a lost or duplicate job),
slow dry runs and full public budgets leave other tenants and the worker API working, overload is a fast
503, per-tenant limits are 429s, SSE never misses the terminal status, /metrics takes the worker secret.

Concurrency runs against a real uvicorn server (tests/support/servers.py) with small budgets, so a few
hundred requests are enough to saturate it; every wait is bounded by a generous "did not hang" limit.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from rlft.client import Client
from rlft_contracts.settings import Settings
from service import crud
from service.app import create_app
from service.db import session_scope
from service.schemas import FinishRequest
from tests.rlcore.reward_servers import RunningServer, misbehaving_server
from tests.security.conftest import WORKER, claim, create_job, job_body
from tests.support.servers import ServerThread
from tests.support.waiting import wait_until

HANG_S = 120  # "did not hang": far above what any of these takes on a loaded 2-core machine
_wait_until = functools.partial(wait_until, timeout_s=HANG_S)
ITEMS = [{"prompt": "2+2=", "completion": "4", "label": "4"}]


def _with(settings: Settings, **overrides: Any) -> Settings:
    return settings.model_copy(update=overrides)


@pytest.fixture
def reward_server() -> Iterator[RunningServer]:
    with misbehaving_server() as srv:
        yield srv


def _count_jobs(settings: Settings) -> set[str]:
    engine = sa.create_engine(settings.database_url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return set(conn.scalars(sa.text("SELECT id FROM jobs")))
    finally:
        engine.dispose()


async def _gather(coros: list) -> list:
    return await asyncio.wait_for(asyncio.gather(*coros), HANG_S)


def _heartbeat(c: httpx.Client, job_id: str, fence: int) -> httpx.Response:
    return c.post(f"/internal/v1/jobs/{job_id}/heartbeat", json={"fence": fence}, headers=WORKER)


# --- bursts ---------------------------------------------------------------------------------------------


def test_a_burst_of_creates_answers_201_429_or_503_and_stores_exactly_the_201s(
    settings: Settings, alice: dict
) -> None:
    # 8 requests at once, a short wait for a slot, at most 20 active jobs: of 200 creates at once, some are
    # refused (503 or 429), none is a 500, and no job is stored that its client was not told about.
    tight = _with(settings, max_requests_in_flight=8, admission_wait_s=0.5, max_active_jobs_per_tenant=20)

    async def burst(url: str) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=250, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=url, timeout=HANG_S, limits=limits) as c:
            return await _gather([c.post("/v1/jobs", json=job_body(), headers=alice) for _ in range(200)])

    with ServerThread(create_app(tight)) as server:
        answers = asyncio.run(burst(server.url))
    codes = [r.status_code for r in answers]
    assert set(codes) <= {201, 429, 503}, sorted(set(codes))
    created = {r.json()["id"] for r in answers if r.status_code == 201}
    assert 0 < len(created) == codes.count(201) <= 20  # the limit holds under concurrent creates
    assert _count_jobs(settings) == created  # every stored job was answered, once
    for r in answers:
        if r.status_code in (429, 503):
            assert int(r.headers["Retry-After"]) >= 1
            assert r.json()["detail"]["code"] in {"overloaded", "database_busy", "too_many_active_jobs"}


def test_slow_dry_runs_of_one_tenant_leave_other_tenants_and_heartbeats_working(
    settings: Settings, alice: dict, bob: dict, reward_server: RunningServer
) -> None:
    # 40 dry runs waiting 8 s each (the attack) against a budget of 4 requests in flight: a dry run
    # holds no slot, thread or connection while it waits, so bob and the worker are served meanwhile.
    tight = _with(settings, max_requests_in_flight=4, max_dry_runs_per_tenant=40)
    with ServerThread(create_app(tight)) as server, httpx.Client(base_url=server.url, timeout=HANG_S) as c:
        bob_job = c.post("/v1/jobs", json=job_body(), headers=bob).json()["id"]
        fence = c.post(f"/internal/v1/jobs/{bob_job}/claim", json={"worker_id": "w"}, headers=WORKER).json()
        slow = {"reward": {"url": reward_server.url("/slow?sleep_s=8")}, "items": ITEMS}
        results: list[httpx.Response] = []

        def attack() -> None:
            async def dry_run(ac: httpx.AsyncClient) -> httpx.Response:
                # 40 arriving at once overflow the 4 slots and their queue: refused ones come back, as
                # clients do after a 503. Once in, a dry run gives its slot back, so all 40 get in.
                while (
                    r := await ac.post("/v1/rewards/validate", json=slow, headers=alice)
                ).status_code == 503:
                    await asyncio.sleep(0.05)
                return r

            async def run() -> None:
                async with httpx.AsyncClient(base_url=server.url, timeout=HANG_S) as ac:
                    results.extend(await _gather([dry_run(ac) for _ in range(40)]))

            asyncio.run(run())

        attacker = threading.Thread(target=attack)
        attacker.start()
        _wait_until(lambda: reward_server.state.in_flight >= 40, "40 dry runs waiting on the endpoint")
        for _ in range(10):
            assert c.get(f"/v1/jobs/{bob_job}", headers=bob).status_code == 200
            assert c.get("/v1/jobs", headers=alice).status_code == 200
            beat = _heartbeat(c, bob_job, fence["fence"])
            assert beat.status_code == 200 and beat.json()["action"] == "continue"
        assert reward_server.state.in_flight >= 40, "the dry runs should still have been waiting"
        attacker.join(HANG_S)
    assert [r.status_code for r in results] == [200] * 40
    assert all(r.json()["ok"] for r in results)


def test_a_full_public_budget_answers_503_fast_while_the_worker_api_answers(
    settings: Settings, alice: dict
) -> None:
    # One public slot, held by a create whose body never finishes arriving (a slow client).
    tight = _with(settings, max_requests_in_flight=1, admission_wait_s=0.2)
    with ServerThread(create_app(tight)) as server, httpx.Client(base_url=server.url, timeout=HANG_S) as c:
        job_id = c.post("/v1/jobs", json=job_body(), headers=alice).json()["id"]
        fence = c.post(f"/internal/v1/jobs/{job_id}/claim", json={"worker_id": "w"}, headers=WORKER).json()
        holder = socket.create_connection(("127.0.0.1", server.port))
        head = (
            f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: {alice['Authorization']}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
        )
        holder.sendall(head.encode())
        try:
            _wait_until(lambda: c.get("/v1/jobs", headers=alice).status_code == 503, "the slot to be taken")
            r = c.get(f"/v1/jobs/{job_id}", headers=alice)
            assert r.status_code == 503 and r.headers["Retry-After"] == "1"
            assert r.json()["detail"]["code"] == "overloaded"
            assert "RLFT_MAX_REQUESTS_IN_FLIGHT" in r.json()["detail"]["message"]
            beat = _heartbeat(c, job_id, fence["fence"])
            assert beat.status_code == 200
            assert c.get("/healthz").status_code == 200
        finally:
            holder.close()
        _wait_until(lambda: c.get("/v1/jobs", headers=alice).status_code == 200, "the slot to come back")
        assert c.get("/v1/jobs", headers=alice).status_code == 200  # the slot came back


# --- the database: a short wait, then 503 ----------------------------------------------------------------


def test_an_exhausted_pool_or_a_locked_sqlite_answers_503_not_500(settings: Settings, alice: dict) -> None:
    tight = _with(settings, db_wait_s=0.3)
    app = create_app(tight)
    with TestClient(app) as c:
        if tight.is_sqlite:
            # Another process holds SQLite's write lock: a create waits db_wait_s, then answers 503.
            path = tight.database_url.split(":///", 1)[1]
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            try:
                r = c.post("/v1/jobs", json=job_body(), headers=alice)
            finally:
                other.execute("ROLLBACK")
                other.close()
        else:
            # Every connection of the public pool is taken: the request gives up after db_wait_s.
            engine = app.state.engine
            held = [engine.connect() for _ in range(engine.pool.size() + engine.pool._max_overflow)]
            try:
                r = c.get("/v1/jobs", headers=alice)
            finally:
                for conn in held:
                    conn.close()
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"] == "1" and r.json()["detail"]["code"] == "database_busy"
        assert c.get("/v1/jobs", headers=alice).status_code == 200


# --- per-tenant limits ------------------------------------------------------------------------------------


def test_dry_runs_in_flight_per_tenant_answer_429(
    settings: Settings, alice: dict, bob: dict, reward_server: RunningServer
) -> None:
    tight = _with(settings, max_dry_runs_per_tenant=2)
    slow = {"reward": {"url": reward_server.url("/slow?sleep_s=5")}, "items": ITEMS}
    fast = {"reward": {"url": reward_server.url("/ok")}, "items": ITEMS}
    with ServerThread(create_app(tight)) as server, httpx.Client(base_url=server.url, timeout=HANG_S) as c:
        waiting = [
            threading.Thread(
                target=c.post, args=("/v1/rewards/validate",), kwargs={"json": slow, "headers": alice}
            )
            for _ in range(2)
        ]
        for t in waiting:
            t.start()
        _wait_until(lambda: reward_server.state.in_flight >= 2, "two dry runs in flight")
        r = c.post("/v1/rewards/validate", json=fast, headers=alice)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
        assert r.json()["detail"]["code"] == "too_many_dry_runs"
        assert "RLFT_MAX_DRY_RUNS_PER_TENANT" in r.json()["detail"]["message"]
        assert c.post("/v1/rewards/validate", json=fast, headers=bob).json()["ok"] is True
        for t in waiting:
            t.join(HANG_S)
        assert c.post("/v1/rewards/validate", json=fast, headers=alice).status_code == 200


def test_active_jobs_per_tenant_answer_429(settings: Settings, alice: dict, bob: dict) -> None:
    with TestClient(create_app(_with(settings, max_active_jobs_per_tenant=3))) as c:
        first = create_job(c, alice)
        claim(c, first["id"])  # a running job counts too
        create_job(c, alice)
        keyed = c.post("/v1/jobs", json=job_body(), headers={**alice, "Idempotency-Key": "k"})
        assert keyed.status_code == 201
        r = c.post("/v1/jobs", json=job_body(), headers=alice)
        assert r.status_code == 429 and r.headers["Retry-After"] == "60"
        assert r.json()["detail"]["code"] == "too_many_active_jobs"
        assert "RLFT_MAX_ACTIVE_JOBS_PER_TENANT" in r.json()["detail"]["message"]
        # A retry of a create that went through is not a new job: it answers as before.
        again = c.post("/v1/jobs", json=job_body(), headers={**alice, "Idempotency-Key": "k"})
        assert again.status_code == 200 and again.json()["id"] == keyed.json()["id"]
        create_job(c, bob)  # another tenant's budget is its own
        c.post(f"/v1/jobs/{keyed.json()['id']}/cancel", headers=alice).raise_for_status()
        create_job(c, alice)  # a cancelled job no longer counts


# --- the client: one job per create, whatever happens to the answer -------------------------------------


class _LoseFirstAnswer(httpx.BaseTransport):
    """Delivers every request to the real server, but the first answer is lost on the way back."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.keys: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.keys.append(request.headers.get("Idempotency-Key"))
        response = self.inner.handle_request(request)
        if len(self.keys) == 1:
            response.read()
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response


def test_the_client_retries_a_create_whose_answer_was_lost_without_a_second_job(
    settings: Settings, alice: dict
) -> None:
    transport = _LoseFirstAnswer()
    key = alice["Authorization"].split()[1]
    with ServerThread(create_app(settings)) as server, Client(server.url, key, transport=transport) as client:
        job = client.jobs.create(job_body())
    assert len(transport.keys) == 2 and transport.keys[0] == transport.keys[1] is not None
    assert _count_jobs(settings) == {job.id}


# --- SSE (item 10) and /metrics (item 13) ------------------------------------------------------------------


def test_sse_sends_the_terminal_status_when_the_job_finishes_between_reads(
    settings: Settings, alice: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The job finishes right after the stream has read its events and before the stream reads the status:
    # the race one subscriber in 200 lost. The stream must still deliver the terminal status event.
    app = create_app(settings)
    with TestClient(app) as c:
        job = create_job(c, alice)
        fence = claim(c, job["id"])["fence"]
        original = crud.list_events
        finished = threading.Event()

        def list_then_finish(session, job_id, after, limit):
            found = original(session, job_id, after, limit)
            if not finished.is_set() and job_id == job["id"]:
                finished.set()
                with session_scope(app.state.worker_session_factory) as s:
                    crud.finish(
                        s, crud.fenced_job(s, job_id, fence), FinishRequest(fence=fence, status="succeeded")
                    )
            return found

        after = max(e["id"] for e in c.get(f"/v1/jobs/{job['id']}/events", headers=alice).json()["data"])
        monkeypatch.setattr(crud, "list_events", list_then_finish)
        with c.stream("GET", f"/v1/jobs/{job['id']}/events/stream?after={after}", headers=alice) as r:
            lines = [ln for ln in r.iter_lines() if ln.startswith("data:")]
    assert finished.is_set()
    assert lines and '"status":"succeeded"' in lines[-1].replace(" ", "")


def test_metrics_take_the_worker_secret_unless_made_public(settings: Settings) -> None:
    with TestClient(create_app(settings)) as c:
        r = c.get("/metrics")
        assert r.status_code == 401 and "RLFT_METRICS_PUBLIC" in r.json()["detail"]["message"]
        assert c.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert "rlft_jobs" in c.get("/metrics", headers=WORKER).text
    with TestClient(create_app(_with(settings, metrics_public=True))) as c:
        assert "rlft_jobs" in c.get("/metrics").text
