"""``GET /v1/jobs/{id}/metrics``: the plain read, and ``max_points`` downsampling for charts."""

from __future__ import annotations

import math

from fastapi.testclient import TestClient

from tests.service.conftest import claim, create_job, wpost

STEPS = 1000
SPIKE = (537, 100.0)
DIP = (211, -100.0)


def _series(step: int) -> float:
    if step == SPIKE[0]:
        return SPIKE[1]
    if step == DIP[0]:
        return DIP[1]
    return math.sin(step / 50)


def _job_with_points(client: TestClient, headers: dict) -> str:
    job = create_job(client, headers)
    fence = claim(client, job["id"])["fence"]
    points = [{"step": s, "name": "reward/mean", "value": _series(s)} for s in range(STEPS)]
    points += [{"step": s * 100, "name": "loss/policy", "value": float(s)} for s in range(10)]
    assert wpost(client, job["id"], "metrics", fence=fence, points=points).json()["accepted"] == STEPS + 10
    return job["id"]


def _by_name(data: list[dict]) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for p in data:
        series.setdefault(p["name"], []).append((p["step"], p["value"]))
    return series


def test_downsampling_keeps_the_extremes_and_the_ends(client: TestClient, alice: dict) -> None:
    jid = _job_with_points(client, alice)
    r = client.get(f"/v1/jobs/{jid}/metrics", params={"max_points": 50}, headers=alice)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [(p["step"], p["name"]) for p in data] == sorted((p["step"], p["name"]) for p in data)
    series = _by_name(data)
    reward = series["reward/mean"]
    assert 24 <= len(reward) <= 50  # downsampled, each of its 24 buckets giving its low and high
    assert SPIKE in reward and DIP in reward  # the extremes survive
    assert reward[0][0] == 0 and reward[-1][0] == STEPS - 1  # and the ends
    assert all(value == _series(step) for step, value in reward)  # stored points, never averages
    # Every bucket's own extremes are kept: the lowest and highest of steps 0-40 (bucket 0 of 24).
    first_bucket = [_series(s) for s in range(0, STEPS * 1 // 24 + 1) if s * 24 // STEPS == 0]
    kept = [v for s, v in reward if s * 24 // STEPS == 0]
    assert min(first_bucket) in kept and max(first_bucket) in kept
    assert series["loss/policy"] == [(s * 100, float(s)) for s in range(10)]  # short series come whole


def test_downsampling_with_filters_and_without(client: TestClient, alice: dict) -> None:
    jid = _job_with_points(client, alice)
    everything = client.get(f"/v1/jobs/{jid}/metrics", params={"limit": 5000}, headers=alice).json()["data"]
    assert len(everything) == STEPS + 10
    r = client.get(
        f"/v1/jobs/{jid}/metrics",
        params={"max_points": 10, "names": "reward/mean", "after_step": 600},
        headers=alice,
    )
    reward = _by_name(r.json()["data"])
    assert list(reward) == ["reward/mean"]
    steps = [s for s, _ in reward["reward/mean"]]
    assert steps[0] == 601 and steps[-1] == STEPS - 1 and len(steps) <= 10
    assert SPIKE not in reward["reward/mean"]  # before after_step


def test_max_points_below_four_is_a_422(client: TestClient, alice: dict) -> None:
    jid = create_job(client, alice)["id"]
    r = client.get(f"/v1/jobs/{jid}/metrics", params={"max_points": 3}, headers=alice)
    assert r.status_code == 422
    assert r.json()["detail"][0]["field"] == "max_points"


def test_batched_ingest_keeps_a_repeated_step_and_name_a_no_op(client: TestClient, alice: dict) -> None:
    job = create_job(client, alice)
    fence = claim(client, job["id"])["fence"]
    batch = [{"step": 1, "name": "a", "value": 1.0}, {"step": 1, "name": "a", "value": 9.0}]
    batch += [{"step": 1, "name": "b", "value": 2.0}]  # the second (1, "a") of one batch is ignored too
    assert wpost(client, job["id"], "metrics", fence=fence, points=batch).json()["accepted"] == 2
    again = [{"step": 1, "name": "b", "value": 7.0}, {"step": 2, "name": "a", "value": 3.0}]
    assert wpost(client, job["id"], "metrics", fence=fence, points=again).json()["accepted"] == 1
    data = client.get(f"/v1/jobs/{job['id']}/metrics", headers=alice).json()["data"]
    assert [(p["step"], p["name"], p["value"]) for p in data] == [(1, "a", 1.0), (1, "b", 2.0), (2, "a", 3.0)]
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=alice).json()["data"]
    assert [e["data"]["metrics"] for e in events if e["type"] == "metrics"] == [
        {"a": 1.0, "b": 2.0},
        {"a": 3.0},
    ]
    samples = [{"step": 1, "index": i, "prompt": "p", "completion": "c", "reward": 0.5} for i in range(16)]
    assert wpost(client, job["id"], "samples", fence=fence, samples=samples).json()["accepted"] == 16
    assert wpost(client, job["id"], "samples", fence=fence, samples=samples).json()["accepted"] == 0
