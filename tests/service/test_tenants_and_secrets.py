"""Tenancy (another tenant's objects answer 404) and write-only reward headers (a canary never leaks)."""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from rlft_contracts.settings import Settings
from tests.service.conftest import WORKER, claim, create_job, job_body, wpost

REDIS_URL = os.environ.get("RLFT_TEST_REDIS_URL")


def _finished_job_with_everything(client: TestClient, headers: dict, tmp_path: Path) -> tuple[str, str, str]:
    """A succeeded job with a metric, a sample, an event and a checkpoint; returns (job, checkpoint, file)."""
    up = client.post("/v1/files", files={"file": ("d.jsonl", b'{"prompt": "x"}\n')}, headers=headers).json()
    jid = create_job(client, headers, dataset={"file_id": up["id"]})["id"]
    fence = claim(client, jid)["fence"]
    wpost(client, jid, "metrics", fence=fence, points=[{"step": 1, "name": "reward/mean", "value": 1.0}])
    wpost(
        client,
        jid,
        "samples",
        fence=fence,
        samples=[{"step": 1, "index": 0, "prompt": "x", "completion": "y"}],
    )
    (tmp_path / "ck" / "model").mkdir(parents=True)
    (tmp_path / "ck" / "model" / "config.json").write_text("{}")
    ckpt = wpost(
        client,
        jid,
        "checkpoints",
        fence=fence,
        step=1,
        location=str(tmp_path / "ck"),
        manifest_sha256="a" * 64,
        size_bytes=2,
        files=[{"path": "model/config.json", "sha256": "b" * 64, "size": 2}],
    ).json()["id"]
    wpost(client, jid, "finish", fence=fence, status="succeeded")
    return jid, ckpt, up["id"]


def test_another_tenant_gets_404_on_every_route(
    client: TestClient, alice: dict, bob: dict, tmp_path: Path
) -> None:
    jid, ckpt, file_id = _finished_job_with_everything(client, alice, tmp_path)
    reads = [
        f"/v1/jobs/{jid}",
        f"/v1/jobs/{jid}/metrics",
        f"/v1/jobs/{jid}/events",
        f"/v1/jobs/{jid}/events/stream",
        f"/v1/jobs/{jid}/samples",
        f"/v1/jobs/{jid}/checkpoints",
        f"/v1/jobs/{jid}/checkpoints/{ckpt}/archive",
        f"/v1/files/{file_id}",
    ]
    for path in reads:
        assert client.get(path, headers=alice).status_code == 200, path
        r = client.get(path, headers=bob)
        assert r.status_code == 404, path
        assert r.json()["detail"]["code"] == "not_found"
    for action in ("cancel", "pause", "resume"):
        assert client.post(f"/v1/jobs/{jid}/{action}", headers=bob).status_code == 404
    assert client.get("/v1/jobs", headers=bob).json()["data"] == []
    # Bob cannot train on Alice's file either.
    r = client.post("/v1/jobs", json=job_body(dataset={"file_id": file_id}), headers=bob)
    assert r.status_code == 422 and r.json()["detail"]["field"] == "dataset.file_id"
    # A missing job and another tenant's job answer the same way.
    assert (
        client.get("/v1/jobs/job_doesnotexist", headers=bob).json()
        == client.get("/v1/jobs/job_doesnotexist", headers=alice).json()
    )


def _redis_messages(queue: str) -> list[bytes]:
    import redis

    r = redis.Redis.from_url(REDIS_URL or "")
    try:
        return r.lrange(queue, 0, -1)
    finally:
        r.delete(queue)
        r.close()


def _sqlite_messages(settings: Settings) -> list[bytes]:
    with sqlite3.connect(settings.broker_url.split(":///", 1)[1]) as conn:
        rows = [r[0] for r in conn.execute("SELECT payload FROM kombu_message")]
    # The task arguments sit base64-encoded in the body: decode them so the check sees everything.
    return [p.encode() + base64.b64decode(json.loads(p)["body"]) for p in rows]


@pytest.fixture
def broker_settings(settings: Settings) -> Settings:
    if REDIS_URL:
        return settings.model_copy(update={"broker_url": REDIS_URL})
    return settings


def test_canary_header_never_leaks(
    broker_settings: Settings, alice: dict, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    from service.app import create_app

    canary = "CANARY-" + secrets.token_hex(8)
    queue = "canary-" + secrets.token_hex(4)
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    with TestClient(create_app(broker_settings)) as client:
        body = job_body(
            reward={"url": "http://127.0.0.1:9/s", "headers": {"Authorization": f"Bearer {canary}"}}
        )
        body["resources"] = {"gpus": 0, "queue": queue}
        created = client.post("/v1/jobs", json=body, headers={**alice, "Idempotency-Key": "k1"})
        jid = created.json()["id"]
        seen += [
            created.text,
            client.post("/v1/jobs", json=body, headers={**alice, "Idempotency-Key": "k1"}).text,
        ]
        # An invalid body carrying the canary must not be echoed back in the 422 either.
        bad = {**body, "hyperparameters": {"group_size": 1}}
        seen.append(client.post("/v1/jobs", json=bad, headers=alice).text)
        bad_header = {**body, "reward": {**body["reward"], "headers": {"A": canary, "B": 3}}}
        seen.append(client.post("/v1/jobs", json=bad_header, headers=alice).text)
        for path in ("", "/metrics", "/events", "/samples", "/checkpoints"):
            seen.append(client.get(f"/v1/jobs/{jid}{path}", headers=alice).text)
        seen.append(client.get("/v1/jobs", headers=alice).text)
        seen.append(client.post(f"/v1/jobs/{jid}/cancel", headers=alice).text)
        seen.append(client.get(f"/v1/jobs/{jid}/events/stream", headers=alice).text)
        seen.append(client.get("/openapi.json").text)
        seen.append(client.get("/metrics", headers=WORKER).text)
    assert all(canary not in text for text in seen)
    assert canary not in caplog.text
    messages = _redis_messages(queue) if REDIS_URL else _sqlite_messages(broker_settings)
    assert any(jid.encode() in m for m in messages), "the job id should have been enqueued"
    assert all(canary.encode() not in m for m in messages)
    # At rest the header is encrypted: the raw row does not hold it.
    engine = sa.create_engine(broker_settings.database_url)
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM jobs WHERE id = :id"), {"id": jid}).one()
    engine.dispose()
    assert canary not in repr(row)


def test_openapi_marks_headers_write_only(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    reward = next(v for k, v in schemas.items() if k.startswith("RewardSpec"))
    assert reward["properties"]["headers"]["writeOnly"] is True


def test_worker_claim_is_the_only_place_headers_come_back(client: TestClient, alice: dict) -> None:
    jid = create_job(client, alice, reward={"url": "http://127.0.0.1:9/s", "headers": {"K": "v-1"}})["id"]
    r = client.post(f"/internal/v1/jobs/{jid}/claim", json={"worker_id": "w"}, headers=WORKER)
    assert r.json()["spec"]["reward"]["headers"] == {"K": "v-1"}
