"""The worker-facing API: claim (compare-and-set), fencing, heartbeats, checkpoints, finish, the reaper."""

from __future__ import annotations

import base64
import json
import sqlite3
from datetime import timedelta

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from rlft_contracts.settings import Settings
from service import reaper
from service.db import make_engine, make_session_factory
from service.models import Job, utcnow
from service.queue import JobQueue
from tests.service.conftest import WORKER, claim, create_job, job_body, wpost


def broker_job_ids(settings: Settings) -> list[str]:
    """Job ids of the messages waiting in the embedded broker (kombu's SQLAlchemy transport on SQLite)."""
    path = settings.broker_url.split(":///", 1)[1]
    with sqlite3.connect(path) as conn:
        payloads = [row[0] for row in conn.execute("SELECT payload FROM kombu_message WHERE visible = 1")]
    return [json.loads(base64.b64decode(json.loads(p)["body"]))[0][0] for p in payloads]


def expire_lease(settings: Settings, job_id: str) -> None:
    engine = make_engine(settings.database_url)
    with engine.begin() as conn:
        past = utcnow() - timedelta(seconds=1)
        conn.execute(sa.update(Job).where(Job.id == job_id).values(lease_expires_at=past))
    engine.dispose()


def sweep(settings: Settings) -> tuple[int, int]:
    engine = make_engine(settings.database_url)
    queue = JobQueue(settings)
    try:
        return reaper.sweep(make_session_factory(engine), settings, queue)
    finally:
        queue.close()
        engine.dispose()


def test_worker_api_needs_the_worker_secret(client: TestClient, alice: dict) -> None:
    job = create_job(client, alice)
    for headers in ({}, alice, {"Authorization": "Bearer wrong"}):
        r = client.post(f"/internal/v1/jobs/{job['id']}/claim", json={"worker_id": "w"}, headers=headers)
        assert r.status_code == 401


def test_claim_is_a_compare_and_set(client: TestClient, alice: dict, settings: Settings) -> None:
    job = create_job(client, alice)
    assert job["id"] in broker_job_ids(settings)  # only the id was enqueued, after the commit
    first = claim(client, job["id"], "w1")
    assert (first["fence"], first["attempt"], first["resume"]) == (1, 1, None)
    r = client.post(f"/internal/v1/jobs/{job['id']}/claim", json={"worker_id": "w2"}, headers=WORKER)
    assert r.status_code == 409 and r.json()["detail"]["code"] == "not_claimable"
    r = client.post(f"/internal/v1/jobs/job_{'0' * 24}/claim", json={"worker_id": "w2"}, headers=WORKER)
    assert r.status_code == 404
    got = client.get(f"/v1/jobs/{job['id']}", headers=alice).json()
    assert got["status"] == "running" and got["started_at"] is not None


def test_claim_carries_decrypted_headers_and_file_rows(client: TestClient, alice: dict) -> None:
    data = b'{"prompt": "a"}\n{"prompt": "b", "label": 1}\n'
    up = client.post("/v1/files", files={"file": ("d.jsonl", data)}, headers=alice)
    reward = {"url": "http://127.0.0.1:9/score", "headers": {"X-Api-Key": "k-123"}}
    job = create_job(client, alice, dataset={"file_id": up.json()["id"]}, reward=reward)
    spec = claim(client, job["id"])["spec"]
    assert spec["reward"]["headers"] == {"X-Api-Key": "k-123"}
    assert spec["dataset"] == {"rows": [{"prompt": "a"}, {"prompt": "b", "label": 1}]}


def _state(client: TestClient, alice: dict, jid: str) -> tuple:
    job = client.get(f"/v1/jobs/{jid}", headers=alice).json()
    metrics = client.get(f"/v1/jobs/{jid}/metrics", headers=alice).json()["data"]
    events = client.get(f"/v1/jobs/{jid}/events", params={"limit": 1000}, headers=alice).json()["data"]
    samples = client.get(f"/v1/jobs/{jid}/samples", headers=alice).json()["data"]
    ckpts = client.get(f"/v1/jobs/{jid}/checkpoints", headers=alice).json()["data"]
    return job, metrics, events, samples, ckpts


def test_a_stale_fence_changes_nothing(client: TestClient, alice: dict, settings: Settings) -> None:
    job = create_job(client, alice)
    jid = job["id"]
    old = claim(client, jid, "w1")["fence"]
    expire_lease(settings, jid)
    assert sweep(settings)[0] == 1  # requeued: attempt 1 of 3
    new = claim(client, jid, "w2")["fence"]
    assert new == old + 1
    wpost(client, jid, "metrics", fence=new, points=[{"step": 1, "name": "reward/mean", "value": 0.5}])
    before = _state(client, alice, jid)
    stale_writes = {
        "heartbeat": {"step": 9},
        "metrics": {"points": [{"step": 2, "name": "reward/mean", "value": 9.0}]},
        "events": {"events": [{"message": "from the past"}]},
        "samples": {"samples": [{"step": 2, "index": 0, "prompt": "p", "completion": "c"}]},
        "checkpoints": {"step": 2, "location": "/tmp/x", "manifest_sha256": "0" * 64, "size_bytes": 1},
        "finish": {"status": "succeeded"},
    }
    for what, body in stale_writes.items():
        r = wpost(client, jid, what, fence=old, **body)
        assert r.status_code == 409, (what, r.text)
        assert r.json()["detail"]["code"] == "stale_fence"
    assert _state(client, alice, jid) == before


def test_heartbeat_extends_the_lease_and_reports_progress(client: TestClient, alice: dict) -> None:
    job = create_job(client, alice)
    c = claim(client, job["id"])
    r = wpost(client, job["id"], "heartbeat", fence=c["fence"], step=2, total_steps=7)
    assert r.json()["action"] == "continue"
    assert r.json()["lease_expires_at"] >= c["lease_expires_at"]
    progress = client.get(f"/v1/jobs/{job['id']}", headers=alice).json()["progress"]
    assert progress == {"step": 2, "total_steps": 7}


def test_repeated_ingestion_is_a_no_op(client: TestClient, alice: dict) -> None:
    job = create_job(client, alice)
    fence = claim(client, job["id"])["fence"]
    points = [{"step": 1, "name": "reward/mean", "value": 0.5}, {"step": 1, "name": "kl/mean", "value": 0.01}]
    assert wpost(client, job["id"], "metrics", fence=fence, points=points).json() == {"accepted": 2}
    assert wpost(client, job["id"], "metrics", fence=fence, points=points).json() == {"accepted": 0}
    sample = {"step": 1, "index": 0, "prompt": "p", "completion": "c", "reward": 1.0}
    assert wpost(client, job["id"], "samples", fence=fence, samples=[sample]).json() == {"accepted": 1}
    assert wpost(client, job["id"], "samples", fence=fence, samples=[sample]).json() == {"accepted": 0}
    assert len(client.get(f"/v1/jobs/{job['id']}/metrics", headers=alice).json()["data"]) == 2
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=alice).json()["data"]
    assert [e["type"] for e in events].count("metrics") == 1


def test_finish_is_idempotent_for_the_same_status(client: TestClient, alice: dict) -> None:
    job = create_job(client, alice)
    fence = claim(client, job["id"])["fence"]
    assert wpost(client, job["id"], "finish", fence=fence, status="succeeded").status_code == 200
    assert wpost(client, job["id"], "finish", fence=fence, status="succeeded").status_code == 200
    assert wpost(client, job["id"], "finish", fence=fence, status="failed").status_code == 409


def test_reaper_requeues_then_fails_worker_lost_repeatedly(
    client: TestClient, alice: dict, settings: Settings
) -> None:
    jid = create_job(client, alice)["id"]
    for attempt in range(1, settings.max_attempts + 1):
        assert claim(client, jid, f"w{attempt}")["attempt"] == attempt
        expire_lease(settings, jid)
        sweep(settings)
    job = client.get(f"/v1/jobs/{jid}", headers=alice).json()
    assert job["status"] == "failed"
    assert job["error"]["code"] == "worker_lost_repeatedly"
    assert broker_job_ids(settings).count(jid) == settings.max_attempts  # create + each requeue


def test_reaper_gives_cancelling_and_pausing_a_way_out(
    client: TestClient, alice: dict, settings: Settings
) -> None:
    a, b = create_job(client, alice)["id"], create_job(client, alice)["id"]
    claim(client, a)
    claim(client, b)
    client.post(f"/v1/jobs/{a}/cancel", headers=alice)
    client.post(f"/v1/jobs/{b}/pause", headers=alice)
    expire_lease(settings, a)
    expire_lease(settings, b)
    assert sweep(settings) == (2, 0)
    assert client.get(f"/v1/jobs/{a}", headers=alice).json()["status"] == "cancelled"
    assert client.get(f"/v1/jobs/{b}", headers=alice).json()["status"] == "paused"


def test_reconciler_re_enqueues_a_lost_message(client: TestClient, alice: dict, settings: Settings) -> None:
    jid = create_job(client, alice)["id"]
    engine = make_engine(settings.database_url)
    with engine.begin() as conn:
        old = utcnow() - timedelta(seconds=settings.reconcile_after_s + 1)
        conn.execute(sa.update(Job).where(Job.id == jid).values(enqueued_at=old))
    engine.dispose()
    assert sweep(settings) == (0, 1)
    assert broker_job_ids(settings).count(jid) == 2
    assert sweep(settings) == (0, 0)  # just re-sent: not again until reconcile_after_s passes


def test_odd_worker_items_do_not_sink_a_batch(client: TestClient, alice: dict) -> None:
    """The worker drops a batch the service refuses, so one bad value must not cost the good ones."""
    job = create_job(client, alice)
    fence = claim(client, job["id"])["fence"]
    points = [{"step": 1, "name": "a", "value": 1.0}, {"step": 1, "name": "b", "value": float("nan")}]
    r = client.post(
        f"/internal/v1/jobs/{job['id']}/metrics",
        content=json.dumps({"fence": fence, "points": points}),  # NaN as the json module writes it
        headers={**WORKER, "Content-Type": "application/json"},
    )
    assert r.json() == {"accepted": 1}
    ev = {"level": "WARN", "message": "x" * 20_000, "data": {"k": 1}}
    assert wpost(client, job["id"], "events", fence=fence, events=[ev]).json() == {"accepted": 1}
    last = client.get(f"/v1/jobs/{job['id']}/events", headers=alice).json()["data"][-1]
    assert last["level"] == "warning" and len(last["message"]) == 10_000
    assert client.get(f"/v1/jobs/{job['id']}/metrics", headers=alice).json()["data"][0]["name"] == "a"


def test_the_app_runs_the_reaper_in_the_background(settings: Settings, alice: dict) -> None:
    import time

    from service.app import create_app

    live = settings.model_copy(update={"run_background_tasks": True, "reaper_interval_s": 0.1})
    with TestClient(create_app(live)) as client:
        jid = create_job(client, alice)["id"]
        claim(client, jid)
        expire_lease(settings, jid)
        deadline = time.monotonic() + 10
        while client.get(f"/v1/jobs/{jid}", headers=alice).json()["status"] != "queued":
            assert time.monotonic() < deadline, "the background reaper did not requeue the job"
            time.sleep(0.1)


def test_oversized_requests_answer_413(client: TestClient, alice: dict, settings: Settings) -> None:
    huge = str(settings.max_upload_bytes + 2 * 1024 * 1024)
    r = client.post("/v1/jobs", content=b"{}", headers={**alice, "Content-Length": huge})
    assert r.status_code == 413 and r.json()["detail"]["code"] == "request_too_large"


@pytest.mark.e2e
def test_concurrent_claims_have_one_winner(settings: Settings, alice: dict) -> None:
    """Eight workers claim the same job at once over real HTTP: one gets it, seven get 409."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from service.app import create_app
    from tests.support.servers import ServerThread

    with ServerThread(create_app(settings)) as srv:
        jid = httpx.post(f"{srv.url}/v1/jobs", json=job_body(), headers=alice).json()["id"]

        def attempt(i: int) -> int:
            body = {"worker_id": f"w{i}"}
            return httpx.post(
                f"{srv.url}/internal/v1/jobs/{jid}/claim", json=body, headers=WORKER
            ).status_code

        with ThreadPoolExecutor(8) as pool:
            codes = sorted(pool.map(attempt, range(8)))
        job = httpx.get(f"{srv.url}/v1/jobs/{jid}", headers=alice).json()
    assert codes == [200] + [409] * 7
    assert job["attempts"] == 1


def test_nul_characters_never_make_a_500(client: TestClient, alice: dict) -> None:
    """Postgres text and JSON refuse NUL; a byte-level model emits it. Stored as U+FFFD on both databases.

    (A client's own text with NUL is refused at submit: tests/security/test_inputs.py.)
    """
    job = create_job(client, alice)
    fence = claim(client, job["id"])["fence"]
    sample = {
        "step": 1,
        "index": 0,
        "prompt": "p\x00",
        "completion": "c\x00c",
        "reward": 1.0,
        "label": {"k\x00": 1},
    }
    assert wpost(client, job["id"], "samples", fence=fence, samples=[sample]).json() == {"accepted": 1}
    ev = {"level": "info", "message": "m\x00", "data": {"x": ["y\x00"]}}
    assert wpost(client, job["id"], "events", fence=fence, events=[ev]).json() == {"accepted": 1}
    got = client.get(f"/v1/jobs/{job['id']}/samples", headers=alice).json()["data"][0]
    assert got["completion"] == "c\ufffdc" and got["prompt"] == "p\ufffd"
    last = client.get(f"/v1/jobs/{job['id']}/events", headers=alice).json()["data"][-1]
    assert last["message"] == "m\ufffd" and last["data"] == {"x": ["y\ufffd"]}
