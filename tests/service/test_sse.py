"""Server-Sent Events over a real HTTP server: delivery lag, Last-Event-ID resume, keep-alives, and delivery
across API processes (the stream polls the database, so a second process sees the first one's writes)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rlft_contracts.settings import Settings
from service.app import create_app
from service.keys import create_api_key
from tests.service.conftest import WORKER, job_body
from tests.support.servers import ServerThread
from tests.support.stacks import api_process

pytestmark = pytest.mark.e2e


@pytest.fixture
def server(settings: Settings) -> Iterator[ServerThread]:
    with ServerThread(create_app(settings)) as srv:
        yield srv


def read_events(response: httpx.Response) -> Iterator[dict]:
    """Parse an SSE stream into {id, event, data} dicts; comments (pings) come as {"comment": ...}."""
    event: dict = {}
    for line in response.iter_lines():
        if line.startswith(":"):
            yield {"comment": line[1:].strip()}
        elif not line:
            if event:
                yield event
            event = {}
        else:
            name, _, value = line.partition(":")
            event[name] = value[1:] if value.startswith(" ") else value


def start_job(base: str, headers: dict) -> tuple[str, int]:
    jid = httpx.post(f"{base}/v1/jobs", json=job_body(), headers=headers).json()["id"]
    fence = httpx.post(f"{base}/internal/v1/jobs/{jid}/claim", json={"worker_id": "w"}, headers=WORKER).json()
    return jid, fence["fence"]


def post_metric(base: str, jid: str, fence: int, step: int) -> float:
    sent = time.perf_counter()
    body = {"fence": fence, "points": [{"step": step, "name": "reward/mean", "value": step / 10}]}
    httpx.post(f"{base}/internal/v1/jobs/{jid}/metrics", json=body, headers=WORKER).raise_for_status()
    return sent


def first_metrics_lag(subscribe_base: str, post_base: str, headers: dict) -> float:
    """Seconds from posting a metric point to ``post_base`` to its arrival on a ``subscribe_base`` stream."""
    jid, fence = start_job(post_base, headers)
    sent: list[float] = []
    url = f"{subscribe_base}/v1/jobs/{jid}/events/stream"
    with httpx.stream("GET", url, headers=headers, timeout=10) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        threading.Timer(0.3, lambda: sent.append(post_metric(post_base, jid, fence, 1))).start()
        for ev in read_events(r):
            if ev.get("event") == "metrics":
                lag = time.perf_counter() - sent[0]
                assert json.loads(ev["data"])["data"]["metrics"] == {"reward/mean": 0.1}
                return lag
    raise AssertionError("the stream ended without the metrics event")


def test_a_metric_point_reaches_a_subscriber_within_a_second(server: ServerThread, alice: dict) -> None:
    lag = first_metrics_lag(server.url, server.url, alice)
    assert lag < 1.0, f"SSE delivery lag {lag:.3f}s"


def test_last_event_id_resumes_and_the_stream_ends_after_a_terminal_status(
    server: ServerThread, alice: dict
) -> None:
    base = server.url
    jid, fence = start_job(base, alice)
    for step in (1, 2, 3):
        post_metric(base, jid, fence, step)
    events = httpx.get(f"{base}/v1/jobs/{jid}/events", headers=alice).json()["data"]
    resume_from = events[2]["id"]  # queued, claimed, step 1 seen: resume after step 1
    body = {"fence": fence, "status": "succeeded"}
    httpx.post(f"{base}/internal/v1/jobs/{jid}/finish", json=body, headers=WORKER).raise_for_status()
    headers = {**alice, "Last-Event-ID": str(resume_from)}
    with httpx.stream("GET", f"{base}/v1/jobs/{jid}/events/stream", headers=headers, timeout=10) as r:
        got = [ev for ev in read_events(r) if "id" in ev]  # returns: the stream closes by itself
    ids = [int(ev["id"]) for ev in got]
    assert ids[:2] == [e["id"] for e in events[3:]] and ids[2] > events[-1]["id"]
    assert [ev["event"] for ev in got] == ["metrics", "metrics", "status"]
    assert json.loads(got[-1]["data"])["data"]["status"] == "succeeded"


def test_keep_alive_pings_while_idle(
    server: ServerThread, alice: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.routers import jobs

    monkeypatch.setattr(jobs, "SSE_PING_S", 0.3)
    jid, _ = start_job(server.url, alice)
    with httpx.stream("GET", f"{server.url}/v1/jobs/{jid}/events/stream", headers=alice, timeout=10) as r:
        for ev in read_events(r):
            if "comment" in ev:
                assert ev["comment"].startswith("ping")
                return
    raise AssertionError("no keep-alive ping")


def test_delivery_across_api_processes(server: ServerThread, settings: Settings, tmp_path: Path) -> None:
    """A second API process (its own engine, no shared memory) streams what the first one ingested."""
    headers = {"Authorization": f"Bearer {create_api_key(settings, 'carol')}"}
    with api_process(settings) as other:
        lag = first_metrics_lag(other, server.url, headers)
    assert lag < 1.0, f"cross-process SSE delivery lag {lag:.3f}s"
