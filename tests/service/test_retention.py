"""Checkpoint retention and the best checkpoint (issue 15): what is kept, what goes and when its files go,
downloads that retention never cuts, 410 after deletion, ``?best=true``, the merged LoRA variant, eval
samples by split, and ``rlft download --best`` giving a directory ``from_pretrained`` loads."""

from __future__ import annotations

import hashlib
import io
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from rlft_contracts.settings import Settings
from service import retention
from service.app import create_app
from service.db import make_engine
from service.models import CheckpointDownload
from tests.service.conftest import WORKER, claim, create_job, job_body, wpost
from tests.service.test_worker_api import sweep
from tests.support.servers import ServerThread

# --- the plan, as pure functions ---


def _ckpts(*rewards: float | None, metric: str = "reward/mean") -> list[Any]:
    return [
        SimpleNamespace(id=f"c{step}", step=step, metrics={} if r is None else {metric: r})
        for step, r in enumerate(rewards, 1)
    ]


def _policy(**fields: Any) -> retention.CheckpointPolicy:
    return retention.checkpoint_policy({"checkpoints": fields})


def test_plan_keeps_newest_best_and_the_resume_one() -> None:
    ckpts = _ckpts(0.1, 0.9, 0.3, 0.2, 0.5, 0.4)
    plan = retention.plan(ckpts, _policy(keep_last=2, keep_best=1))
    assert sorted(plan.keep) == ["c2", "c5", "c6"] and plan.best == "c2"
    plan = retention.plan(ckpts, _policy(keep_last=1, keep_best=2))
    assert sorted(plan.keep) == ["c2", "c5", "c6"]
    # keep_best 0: only the newest keep_last, and the best of what stays.
    plan = retention.plan(ckpts, _policy(keep_last=1, keep_best=0))
    assert plan.keep == {"c6"} and plan.best == "c6"
    # min mode: the lowest is best.
    plan = retention.plan(ckpts, _policy(keep_last=1, keep_best=1, best_mode="min"))
    assert plan.keep == {"c1", "c6"} and plan.best == "c1"
    # Without keep_last every checkpoint stays, as before the policy existed.
    assert retention.plan(ckpts, _policy()).keep == {c.id for c in ckpts}


def test_plan_without_the_metric_keeps_the_newest_as_best() -> None:
    ckpts = _ckpts(None, None, None)
    plan = retention.plan(ckpts, _policy(keep_last=1))
    assert plan.keep == {"c3"} and plan.best == "c3"
    # A tie goes to the newer checkpoint; a non-finite value is no score.
    plan = retention.plan(_ckpts(0.5, 0.5, float("nan")), _policy(keep_last=1, keep_best=1))
    assert plan.keep == {"c2", "c3"} and plan.best == "c2"


def test_policy_defaults_follow_evaluation() -> None:
    assert retention.checkpoint_policy({}) == retention.CheckpointPolicy("reward/mean", "max", None, 1)
    with_eval = retention.checkpoint_policy({"evaluation": {"every_steps": 5}, "checkpoints": {}})
    assert with_eval.best_metric == "eval/reward/mean"
    stored_default = {"best_metric": None, "best_mode": "max", "keep_last": None, "keep_best": 1}
    assert retention.checkpoint_policy({"checkpoints": stored_default}).best_metric == "reward/mean"
    ckpts = _ckpts(0.2, 0.8, None, metric="eval/reward/mean")
    plan = retention.plan(
        ckpts, retention.checkpoint_policy({"evaluation": {}, "checkpoints": {"keep_last": 1}})
    )
    assert plan.keep == {"c2", "c3"} and plan.best == "c2"


# --- through the API, on SQLite and Postgres ---


def write_checkpoint(root: Path, files: dict[str, bytes]) -> list[dict[str, Any]]:
    for rel, data in {**files, "manifest.json": b"{}"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return [
        {"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        for rel, data in files.items()
    ]


def running_job(http: httpx.Client, headers: dict, **policy: int) -> tuple[str, int, Any]:
    """A job with the ``checkpoints`` policy, claimed by a worker over real HTTP: (id, fence, worker post)."""
    jid = http.post("/v1/jobs", json=job_body(checkpoints=policy), headers=headers).json()["id"]
    claimed = http.post(f"/internal/v1/jobs/{jid}/claim", json={"worker_id": "w"}, headers=WORKER)

    def post(job_id: str, what: str, **body: Any) -> httpx.Response:
        return http.post(f"/internal/v1/jobs/{job_id}/{what}", json=body, headers=WORKER)

    return jid, claimed.json()["fence"], post


def register(
    post: Any, jid: str, fence: int, root: Path, step: int, files: dict[str, bytes], **metrics: float
):
    listed = write_checkpoint(root, files)
    body = {
        "step": step,
        "location": str(root),
        "manifest_sha256": "f" * 64,
        "size_bytes": 1,
        "files": listed,
    }
    r = post(jid, "checkpoints", fence=fence, metrics=metrics, **body)
    assert r.status_code == 200, r.text
    return r.json()["id"]


def _model_files(step: int) -> dict[str, bytes]:
    return {"model/config.json": b'{"model_type": "qwen2"}', "model/model.safetensors": bytes([step]) * 1000}


def test_retention_deletes_exactly_the_expected_checkpoints(
    client: TestClient, alice: dict, settings: Settings, tmp_path: Path
) -> None:
    jid = create_job(client, alice, checkpoints={"keep_last": 2, "keep_best": 1})["id"]
    fence = claim(client, jid)["fence"]
    post = lambda *a, **kw: wpost(client, *a, **kw)  # noqa: E731
    rewards = {1: 0.1, 2: 0.9, 3: 0.3, 4: 0.2, 5: 0.5, 6: 0.4}
    ids = {}
    for step, reward in rewards.items():
        ids[step] = register(
            post, jid, fence, tmp_path / f"s{step}", step, _model_files(step), **{"reward/mean": reward}
        )
    listed = client.get(f"/v1/jobs/{jid}/checkpoints", headers=alice).json()["data"]
    assert [(c["step"], c["best"], c["deleted"]) for c in listed] == [
        (1, False, True),
        (2, True, False),
        (3, False, True),
        (4, False, True),
        (5, False, False),
        (6, False, False),
    ]
    assert listed[1]["metrics"] == {"reward/mean": 0.9}
    best = client.get(f"/v1/jobs/{jid}/checkpoints", params={"best": "true"}, headers=alice).json()["data"]
    assert [c["id"] for c in best] == [ids[2]]
    # Deleted in the listing at once; the files go at the reaper's next sweep.
    assert all((tmp_path / f"s{s}").exists() for s in rewards)
    sweep(settings)
    assert [s for s in rewards if (tmp_path / f"s{s}").exists()] == [2, 5, 6]
    r = client.get(f"/v1/jobs/{jid}/checkpoints/{ids[3]}/archive", headers=alice)
    assert r.status_code == 410 and r.json()["detail"]["code"] == "checkpoint_deleted"
    assert "retention" in r.json()["detail"]["message"] and "best=true" in r.json()["detail"]["message"]
    assert client.get(f"/v1/jobs/{jid}/checkpoints/{ids[2]}/archive", headers=alice).status_code == 200
    events = client.get(f"/v1/jobs/{jid}/events", params={"limit": 1000}, headers=alice).json()["data"]
    assert any("step 1 deleted by retention" in e["message"] for e in events)
    # A resume starts from the newest, which retention never lets go.
    client.post(f"/v1/jobs/{jid}/pause", headers=alice)
    wpost(client, jid, "finish", fence=fence, status="paused")
    client.post(f"/v1/jobs/{jid}/resume", headers=alice)
    assert claim(client, jid, "w2")["resume"]["step"] == 6
    # A job cannot continue from a deleted checkpoint.
    r = client.post("/v1/jobs", json={**job_body(), "model": {"checkpoint": ids[1]}}, headers=alice)
    assert r.status_code == 422 and r.json()["detail"]["code"] == "checkpoint_deleted"


def test_without_a_policy_every_checkpoint_stays(
    client: TestClient, alice: dict, settings: Settings, tmp_path: Path
) -> None:
    jid = create_job(client, alice)["id"]
    fence = claim(client, jid)["fence"]
    post = lambda *a, **kw: wpost(client, *a, **kw)  # noqa: E731
    for step in (1, 2, 3):
        register(post, jid, fence, tmp_path / f"s{step}", step, _model_files(step), **{"reward/mean": -step})
    sweep(settings)
    listed = client.get(f"/v1/jobs/{jid}/checkpoints", headers=alice).json()["data"]
    assert [(c["best"], c["deleted"]) for c in listed] == [(True, False), (False, False), (False, False)]
    assert all((tmp_path / f"s{s}").exists() for s in (1, 2, 3))


def test_a_download_in_progress_is_not_cut(settings: Settings, alice: dict, tmp_path: Path) -> None:
    big = {"model/config.json": b"{}", "model/model.safetensors": hashlib.sha256(b"x").digest() * (1 << 20)}
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        jid, fence, post = running_job(http, alice, keep_last=1, keep_best=0)

        first = register(post, jid, fence, tmp_path / "s1", 1, big)
        got = bytearray()
        with http.stream("GET", f"/v1/jobs/{jid}/checkpoints/{first}/archive", headers=alice) as resp:
            assert resp.status_code == 200
            chunks = resp.iter_bytes(1 << 16)
            got += next(chunks)
            # Retention lets step 1 go while it downloads; the sweep must leave its files alone.
            register(post, jid, fence, tmp_path / "s2", 2, _model_files(2))
            assert _listed(http, jid, alice)[first]["deleted"] is True
            sweep(settings)
            assert (tmp_path / "s1" / "model" / "model.safetensors").exists()
            assert _live_leases(settings) == 1
            again = http.get(f"/v1/jobs/{jid}/checkpoints/{first}/archive", headers=alice)
            assert again.status_code == 410 and again.json()["detail"]["code"] == "checkpoint_deleted"
            for chunk in chunks:
                got += chunk
        with tarfile.open(fileobj=io.BytesIO(bytes(got))) as tar:
            weights = tar.extractfile(f"{jid}-step-1/model.safetensors").read()
        assert weights == big["model/model.safetensors"]
        # Once the download ended, the next sweep removes the files.
        for _ in range(100):
            sweep(settings)
            if not (tmp_path / "s1").exists():
                break
            time.sleep(0.1)
        assert not (tmp_path / "s1").exists() and (tmp_path / "s2").exists()
        assert _live_leases(settings) == 0


def test_a_download_given_up_ends_its_lease(settings: Settings, alice: dict, tmp_path: Path) -> None:
    big = {"model/config.json": b"{}", "model/model.safetensors": b"w" * (32 << 20)}
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        jid, fence, post = running_job(http, alice, keep_last=1, keep_best=0)

        first = register(post, jid, fence, tmp_path / "s1", 1, big)
        with http.stream("GET", f"/v1/jobs/{jid}/checkpoints/{first}/archive", headers=alice) as resp:
            next(resp.iter_bytes(1 << 16))
            register(post, jid, fence, tmp_path / "s2", 2, _model_files(2))
        # The client hung up mid-download: its lease ends with it, not 120 s later.
        deadline = time.monotonic() + 15
        while (tmp_path / "s1").exists() and time.monotonic() < deadline:
            sweep(settings)
            time.sleep(0.2)
        assert not (tmp_path / "s1").exists() and _live_leases(settings) == 0


def _listed(http: httpx.Client, jid: str, alice: dict) -> dict[str, dict]:
    return {c["id"]: c for c in http.get(f"/v1/jobs/{jid}/checkpoints", headers=alice).json()["data"]}


def _live_leases(settings: Settings) -> int:
    engine = make_engine(settings.database_url)
    with engine.connect() as conn:
        n = conn.execute(sa.select(sa.func.count()).select_from(CheckpointDownload)).scalar_one()
    engine.dispose()
    return int(n)


def test_merged_variant(client: TestClient, alice: dict, tmp_path: Path) -> None:
    jid = create_job(client, alice)["id"]
    fence = claim(client, jid)["fence"]
    post = lambda *a, **kw: wpost(client, *a, **kw)  # noqa: E731
    adapter = {"model/adapter_config.json": b"{}", "model/adapter_model.safetensors": b"A" * 10}
    plain = register(post, jid, fence, tmp_path / "s1", 1, adapter)
    merged = {"merged/config.json": b'{"model_type": "qwen2"}', "merged/model.safetensors": b"M" * 700}
    final = register(post, jid, fence, tmp_path / "s2", 2, {**adapter, **merged})
    r = client.get(f"/v1/jobs/{jid}/checkpoints/{final}/archive", params={"variant": "merged"}, headers=alice)
    assert r.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        assert sorted(tar.getnames()) == [
            f"{jid}-step-2-merged/config.json",
            f"{jid}-step-2-merged/model.safetensors",
        ]
    with tarfile.open(
        fileobj=io.BytesIO(client.get(f"/v1/jobs/{jid}/checkpoints/{final}/archive", headers=alice).content)
    ) as tar:
        assert sorted(tar.getnames()) == [
            f"{jid}-step-2/adapter_config.json",
            f"{jid}-step-2/adapter_model.safetensors",
        ]
    r = client.get(f"/v1/jobs/{jid}/checkpoints/{plain}/archive", params={"variant": "merged"}, headers=alice)
    assert r.status_code == 409 and r.json()["detail"]["code"] == "no_merged_model"
    assert "merge_lora_on_save" in r.json()["detail"]["message"]
    r = client.get(
        f"/v1/jobs/{jid}/checkpoints/{plain}/archive", params={"variant": "adapter"}, headers=alice
    )
    assert r.status_code == 422


def test_samples_by_split(client: TestClient, alice: dict) -> None:
    jid = create_job(client, alice)["id"]
    fence = claim(client, jid)["fence"]
    samples = [
        {"step": 0, "index": 0, "prompt": "p", "completion": "eval at 0", "reward": 0.5, "split": "eval"},
        {"step": 1, "index": 0, "prompt": "p", "completion": "train", "reward": 1.0},
        {"step": 1, "index": 0, "prompt": "p", "completion": "eval", "reward": 0.0, "split": "eval"},
        {"step": 1, "index": 1, "prompt": "p", "completion": "eval 2", "reward": 0.0, "split": "eval"},
    ]
    r = wpost(client, jid, "samples", fence=fence, samples=samples)
    assert r.json()["accepted"] == 4
    assert wpost(client, jid, "samples", fence=fence, samples=samples).json()["accepted"] == 0  # idempotent

    def get(**params: Any) -> dict:
        return client.get(f"/v1/jobs/{jid}/samples", params=params, headers=alice).json()

    train = get()
    assert train["step"] == 1 and [s["completion"] for s in train["data"]] == ["train"]
    assert train["data"][0]["split"] == "train"
    assert [s["completion"] for s in get(split="eval")["data"]] == ["eval", "eval 2"]
    assert [s["completion"] for s in get(split="eval", step=0)["data"]] == ["eval at 0"]
    assert get(split="train", step=0) == {"step": 0, "data": []}
    r = client.get(f"/v1/jobs/{jid}/samples", params={"split": "test"}, headers=alice)
    assert r.status_code == 422
    r = wpost(client, jid, "samples", fence=fence, samples=[{**samples[0], "split": "holdout"}])
    assert r.status_code == 422


def test_cli_download_best_loads_with_from_pretrained(
    settings: Settings, alice: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoModelForCausalLM

    from rlcore.testing import make_tiny_model
    from rlft.cli import main

    model = make_tiny_model(tmp_path / "tiny", "tiny")
    weights = {
        f"model/{p.relative_to(model).as_posix()}": p.read_bytes()
        for p in sorted(model.rglob("*"))
        if p.is_file()
    }
    merged = {f"merged/{k[len('model/') :]}": v for k, v in weights.items()}
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        jid, fence, post = running_job(http, alice, keep_last=1, keep_best=1)

        for step, reward in ((1, 0.2), (2, 0.9), (3, 0.1)):
            files = {**weights, **(merged if step == 2 else {})}
            register(post, jid, fence, tmp_path / f"s{step}", step, files, **{"reward/mean": reward})
        key = alice["Authorization"].split(" ", 1)[1]
        conn = ["--api-url", server.url, "--api-key", key]
        out = tmp_path / "best"
        assert main(["download", jid, "--best", "-o", str(out), *conn]) == 0
        assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "qwen2"
        assert (out / "model.safetensors").read_bytes() == weights["model/model.safetensors"]
        assert main(["download", jid, "--best", "--merged", "-o", str(tmp_path / "m"), *conn]) == 0
        assert AutoModelForCausalLM.from_pretrained(tmp_path / "m").config.model_type == "qwen2"
        # The deleted step 1 answers 410 with what to do.
        assert main(["download", jid, "--step", "1", "-o", str(tmp_path / "gone"), *conn]) != 0
        assert "retention" in capsys.readouterr().err
