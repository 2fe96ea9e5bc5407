"""Public job routes: create (validation, idempotency), list, state machine, metrics, events, samples."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.service.conftest import WORKER, claim, create_job, job_body, wpost


def test_create_returns_a_queued_job_with_progress_and_masked_spec(client: TestClient, alice: dict) -> None:
    body = job_body()
    body["reward"]["headers"] = {"Authorization": "Bearer s3cret"}
    r = client.post("/v1/jobs", json=body, headers=alice)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["id"].startswith("job_")
    assert job["status"] == "queued"
    assert job["progress"] == {"step": 0, "total_steps": 5}
    assert job["error"] is None
    assert job["queue"] == "cpu"  # gpus: 0
    assert job["spec"]["reward"]["headers"] == {"Authorization": "********"}
    assert job["metadata"] == {"team": "search"}
    assert client.get(f"/v1/jobs/{job['id']}", headers=alice).json()["id"] == job["id"]


def _ppo(**hyperparameters) -> dict:
    return {"algorithm": "ppo", "hyperparameters": {"steps": 5, "prompts_per_step": 2, **hyperparameters}}


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"hyperparameters": {"group_size": 1}}, "", "group_size must be at least 2"),
        ({"hyperparameters": {"steps": 0}}, "hyperparameters.steps", "greater than or equal to 1"),
        ({"model": {}}, "model", "give exactly one of model.name_or_path"),
        ({"reward": {"url": "ftp://x/score"}}, "reward.url", "http://"),
        # PPO's knobs
        (_ppo(reward_norm="whiten"), "hyperparameters.reward_norm", "'none', 'batch' or 'running'"),
        (_ppo(value_model="tiny"), "hyperparameters.value_model", "'separate' or 'shared'"),
        (_ppo(critic_warmup_steps=-1), "hyperparameters.critic_warmup_steps", "greater than or equal to 0"),
        (_ppo(entropy_coef=-0.01), "hyperparameters.entropy_coef", "greater than or equal to 0"),
        (_ppo(minibatch_size=64), "", "hyperparameters.minibatch_size (64) is larger than the rollout"),
        # Sharding: a strategy it knows, and more than one rank to shard over
        ({"resources": {"gpus": 2, "strategy": "zero3"}}, "resources.strategy", "'ddp' or 'fsdp'"),
        ({"resources": {"gpus": 1, "strategy": "fsdp"}}, "resources", "resources.strategy 'fsdp' shards"),
        ({"resources": {"gpus": 0, "strategy": "fsdp"}}, "resources", "ask for gpus >= 2"),
        (
            {"hyperparameters": {"gradient_checkpointing": "yes"}},
            "hyperparameters.gradient_checkpointing",
            "",
        ),
    ],
)
def test_invalid_spec_answers_422_naming_the_field(
    client: TestClient, alice: dict, change: dict, field: str, words: str
) -> None:
    r = client.post("/v1/jobs", json=job_body(**change), headers=alice)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert any(words in d["msg"] and (not field or d["field"] == field) for d in detail), detail


def test_missing_reward_url_and_unknown_file_are_refused(client: TestClient, alice: dict) -> None:
    r = client.post("/v1/jobs", json=job_body(reward={}), headers=alice)
    assert r.status_code == 422
    assert r.json()["detail"]["field"] == "reward.url"
    r = client.post("/v1/jobs", json=job_body(dataset={"file_id": "file_nope"}), headers=alice)
    assert r.status_code == 422
    assert r.json()["detail"]["field"] == "dataset.file_id"
    assert "POST /v1/files" in r.json()["detail"]["message"]


def test_reward_url_policy_refuses_metadata_addresses(client: TestClient, alice: dict) -> None:
    r = client.post("/v1/jobs", json=job_body(reward={"url": "http://169.254.169.254/latest"}), headers=alice)
    assert r.status_code == 422
    assert r.json()["detail"]["code"] == "reward_url_forbidden"
    r = client.post("/v1/jobs", json=job_body(reward={"url": "http://user:pw@127.0.0.1/x"}), headers=alice)
    assert r.status_code == 422


def test_idempotency_key_returns_the_same_job(client: TestClient, alice: dict) -> None:
    h = {**alice, "Idempotency-Key": "abc-1"}
    first = client.post("/v1/jobs", json=job_body(), headers=h)
    again = client.post("/v1/jobs", json=job_body(), headers=h)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert len(client.get("/v1/jobs", headers=alice).json()["data"]) == 1
    other = client.post("/v1/jobs", json=job_body(metadata={"x": "y"}), headers=h)
    assert other.status_code == 409
    assert other.json()["detail"]["code"] == "idempotency_key_reused"


def test_list_filters_and_pages(client: TestClient, alice: dict) -> None:
    ids = [create_job(client, alice, metadata={"team": t})["id"] for t in ("a", "b", "a")]
    client.post(f"/v1/jobs/{ids[0]}/cancel", headers=alice)
    page = client.get("/v1/jobs", params={"limit": 2}, headers=alice).json()
    assert [j["id"] for j in page["data"]] == [ids[2], ids[1]]  # newest first
    assert page["has_more"] and page["next_after"] == ids[1]
    rest = client.get("/v1/jobs", params={"limit": 2, "after": page["next_after"]}, headers=alice).json()
    assert [j["id"] for j in rest["data"]] == [ids[0]] and not rest["has_more"]
    team_a = client.get("/v1/jobs", params={"metadata.team": "a"}, headers=alice).json()["data"]
    assert {j["id"] for j in team_a} == {ids[0], ids[2]}
    cancelled = client.get("/v1/jobs", params={"status": "cancelled"}, headers=alice).json()["data"]
    assert [j["id"] for j in cancelled] == [ids[0]]
    assert client.get("/v1/jobs", params={"status": "bogus"}, headers=alice).status_code == 422


def test_cancel_queued_is_immediate_and_idempotent(client: TestClient, alice: dict) -> None:
    job = create_job(client, alice)
    for _ in range(2):
        r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=alice)
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert r.json()["finished_at"] is not None
    assert client.post(f"/v1/jobs/{job['id']}/pause", headers=alice).status_code == 409
    assert client.post(f"/v1/jobs/{job['id']}/resume", headers=alice).status_code == 409
    # A cancelled job cannot be claimed.
    r = client.post(f"/internal/v1/jobs/{job['id']}/claim", json={"worker_id": "w"}, headers=WORKER)
    assert r.status_code == 409


def test_cancel_running_goes_through_cancelling(client: TestClient, alice: dict) -> None:
    job = create_job(client, alice)
    c = claim(client, job["id"])
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=alice).json()["status"] == "cancelling"
    hb = client.post(f"/internal/v1/jobs/{job['id']}/heartbeat", json={"fence": c["fence"]}, headers=WORKER)
    assert hb.json()["action"] == "cancel"
    r = wpost(client, job["id"], "finish", fence=c["fence"], status="cancelled")
    assert r.json()["status"] == "cancelled"
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=alice).json()["status"] == "cancelled"


def test_pause_and_resume(client: TestClient, alice: dict) -> None:
    job = create_job(client, alice)
    c = claim(client, job["id"])
    assert client.post(f"/v1/jobs/{job['id']}/pause", headers=alice).json()["status"] == "pausing"
    hb = client.post(f"/internal/v1/jobs/{job['id']}/heartbeat", json={"fence": c["fence"]}, headers=WORKER)
    assert hb.json()["action"] == "pause"
    wpost(client, job["id"], "finish", fence=c["fence"], status="paused")
    assert client.get(f"/v1/jobs/{job['id']}", headers=alice).json()["status"] == "paused"
    assert client.post(f"/v1/jobs/{job['id']}/resume", headers=alice).json()["status"] == "queued"
    assert claim(client, job["id"], "w2")["fence"] == c["fence"] + 1


def test_succeeded_job_refuses_every_transition(client: TestClient, alice: dict) -> None:
    job = create_job(client, alice)
    c = claim(client, job["id"])
    wpost(client, job["id"], "finish", fence=c["fence"], status="succeeded")
    for action in ("cancel", "pause", "resume"):
        r = client.post(f"/v1/jobs/{job['id']}/{action}", headers=alice)
        assert r.status_code == 409 and r.json()["detail"]["code"] == "illegal_transition"


def test_failed_job_carries_its_error(client: TestClient, alice: dict) -> None:
    job = create_job(client, alice)
    c = claim(client, job["id"])
    error = {"code": "out_of_memory", "message": "CUDA OOM"}
    wpost(client, job["id"], "finish", fence=c["fence"], status="failed", error=error)
    got = client.get(f"/v1/jobs/{job['id']}", headers=alice).json()
    assert got["status"] == "failed"
    assert got["error"] == {"code": "out_of_memory", "message": "CUDA OOM"}


def test_metrics_events_samples_read_back(client: TestClient, alice: dict) -> None:
    job = create_job(client, alice)
    jid, fence = job["id"], claim(client, job["id"])["fence"]
    names = ("reward/mean", "loss/policy")
    points = [{"step": s, "name": n, "value": s * 0.1} for s in (1, 2, 3) for n in names]
    wpost(client, jid, "metrics", fence=fence, points=points)
    params = {"after_step": 1, "names": "reward/mean"}
    got = client.get(f"/v1/jobs/{jid}/metrics", params=params, headers=alice)
    assert [(m["step"], m["name"]) for m in got.json()["data"]] == [(2, "reward/mean"), (3, "reward/mean")]
    job_now = client.get(f"/v1/jobs/{jid}", headers=alice).json()
    assert job_now["latest_metrics"]["reward/mean"] == pytest.approx(0.3)
    assert job_now["progress"]["step"] == 3

    sample = {"step": 3, "index": 0, "group": 0, "prompt": "2+2=", "completion": "4", "reward": 1.0}
    bad = {**sample, "index": 1, "completion": "x", "reward": None, "error": "reward endpoint: item error"}
    wpost(client, jid, "samples", fence=fence, samples=[sample, bad])
    s = client.get(f"/v1/jobs/{jid}/samples", params={"step": 3}, headers=alice).json()
    assert s["step"] == 3 and [x["completion"] for x in s["data"]] == ["4", "x"]
    assert s["data"][1]["error"] == "reward endpoint: item error"
    assert client.get(f"/v1/jobs/{jid}/samples", headers=alice).json()["step"] == 3  # default: newest

    ev = {"level": "warning", "type": "message", "message": "slow reward endpoint", "data": {"p95_ms": 900}}
    wpost(client, jid, "events", fence=fence, events=[ev])
    events = client.get(f"/v1/jobs/{jid}/events", headers=alice).json()["data"]
    types = [e["type"] for e in events]
    assert types[:2] == ["status", "status"] and types.count("metrics") == 3 and types[-1] == "message"
    after = client.get(f"/v1/jobs/{jid}/events", params={"after": events[-2]["id"]}, headers=alice).json()
    assert [e["message"] for e in after["data"]] == ["slow reward endpoint"]
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_unauthenticated_requests_get_401(client: TestClient) -> None:
    assert client.get("/v1/jobs").status_code == 401
    r = client.get("/v1/jobs", headers={"Authorization": "Bearer rlft_wrong"})
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"


def test_big_inline_datasets_are_sent_to_files(client: TestClient, alice: dict) -> None:
    rows = [{"prompt": f"q{i}"} for i in range(10_001)]
    r = client.post("/v1/jobs", json=job_body(dataset={"rows": rows}), headers=alice)
    assert r.status_code == 422
    assert r.json()["detail"]["field"] == "dataset.rows" and "POST /v1/files" in r.json()["detail"]["message"]
