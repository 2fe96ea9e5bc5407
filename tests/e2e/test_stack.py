"""A job submitted over REST trains a real model against a real reward endpoint, every part a real process.

Only HTTP crosses from the tests to the stack (plus signals to the worker processes, for the kill test).
The measured figures (submit → first metric, seconds per step, kill → next step) are written to
``figures.json`` in the session's directory and to ``$RLFT_E2E_FIGURES`` when set.
"""

from __future__ import annotations

import io
import json
import os
import signal
import tarfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Stack, training_children, wait_for
from tests.support.specs import PROMPTS, letter_spec

pytestmark = pytest.mark.e2e

# Measured on the tiny model (seed 1): GRPO's mean reward goes from ~0.01 to ~0.4 in 8 steps, PPO's from
# ~0.005 to ~0.98 in 20 (tests/rlcore/test_learning.py has the longer runs).
GRPO = dict(
    steps=10,
    prompts_per_step=4,
    group_size=8,
    max_new_tokens=8,
    learning_rate=2e-2,
    checkpoint_every=5,
    seed=1,
)
PPO = dict(
    steps=20,
    prompts_per_step=16,
    group_size=1,
    max_new_tokens=8,
    learning_rate=2e-2,
    checkpoint_every=10,
    seed=1,
)
JOB_TIMEOUT_S = 420
# Jobs that a test interrupts score against the "slow" reward server (200 ms a step at least) and run
# 30 steps or more, so that they are still running when the test acts.
QUIET_CHECK_S = 4.0  # how long a cancelled job is watched for late metrics
FIGURES: dict[str, Any] = {}


def make_spec(
    stack: Stack, algorithm: str = "grpo", reward: str = "letter", reward_extra: dict | None = None, **hp: Any
) -> dict[str, Any]:
    hyper = {**(PPO if algorithm == "ppo" else GRPO), **hp}
    endpoint = {
        "url": stack.reward_urls[reward],
        "timeout_s": 10,
        "max_retries": 2,
        **({"protocol": "openrlhf"} if reward == "openrlhf" else {}),
        **(reward_extra or {}),
    }
    return letter_spec(stack.model_path, endpoint, algorithm=algorithm, prompts=PROMPTS, **hyper)


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def record(name: str, value: Any) -> None:
    FIGURES[name] = value
    text = json.dumps(FIGURES, indent=1, sort_keys=True)
    if os.environ.get("RLFT_E2E_FIGURES"):
        Path(os.environ["RLFT_E2E_FIGURES"]).write_text(text)


def reward_curve(stack: Stack, job_id: str) -> list[float]:
    rows = sorted(stack.metrics(job_id, "reward/mean"), key=lambda m: m["step"])
    return [m["value"] for m in rows]


def assert_one_row_per_step_and_name(stack: Stack, job_id: str, steps: int) -> None:
    rows = stack.metrics(job_id)
    counts = Counter((m["step"], m["name"]) for m in rows)
    assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1]
    for name in ("reward/mean", "loss/policy"):
        assert sorted(m["step"] for m in rows if m["name"] == name) == list(range(1, steps + 1)), name


def assert_archive_loads(stack: Stack, job_id: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    ckpts = stack.request("GET", f"/v1/jobs/{job_id}/checkpoints").json()["data"]
    assert ckpts, "no checkpoint registered"
    newest = max(ckpts, key=lambda c: c["step"])
    resp = stack.request("GET", f"/v1/jobs/{job_id}/checkpoints/{newest['id']}/archive")
    assert resp.status_code == 200, resp.text
    dest = tmp_path / f"archive-{job_id}"
    with tarfile.open(fileobj=io.BytesIO(resp.content)) as tar:
        tar.extractall(dest, filter="data")
    (config,) = list(dest.rglob("config.json"))
    model = AutoModelForCausalLM.from_pretrained(config.parent)
    assert sum(p.numel() for p in model.parameters()) > 0


def assert_learned_and_downloadable(stack: Stack, job: dict, steps: int, tmp_path: Path) -> None:
    done = stack.wait_status(job["id"], {"succeeded", "failed", "cancelled"}, JOB_TIMEOUT_S)
    assert done["status"] == "succeeded", done.get("error")
    curve = reward_curve(stack, job["id"])
    assert len(curve) == steps
    first, last = sum(curve[:3]) / 3, sum(curve[-3:]) / 3
    assert last > first + 0.1, f"the reward did not rise: {curve}"
    assert_one_row_per_step_and_name(stack, job["id"], steps)
    assert_archive_loads(stack, job["id"], tmp_path)


def record_timing(stack: Stack, job: dict, submitted_at: float, label: str) -> None:
    rows = sorted(stack.metrics(job["id"], "reward/mean"), key=lambda m: m["step"])
    stamps = [ts(m["created_at"]) for m in rows]
    engine = [m["value"] for m in stack.metrics(job["id"], "time/step_s")]
    record(f"{label}.submit_to_first_metric_s", round(stamps[0] - submitted_at, 2))
    record(f"{label}.stack_s_per_step", round((stamps[-1] - stamps[0]) / max(1, len(stamps) - 1), 3))
    record(f"{label}.engine_s_per_step", round(sum(engine) / len(engine), 3))


def test_grpo_and_ppo_jobs_succeed_learn_and_their_checkpoints_load(stack, tmp_path):
    submitted_at = time.time()
    grpo = stack.submit(make_spec(stack, "grpo"))
    ppo = stack.submit(make_spec(stack, "ppo"))
    assert grpo["status"] in ("queued", "running") and grpo["queue"] == "cpu"
    assert_learned_and_downloadable(stack, grpo, GRPO["steps"], tmp_path)
    assert_learned_and_downloadable(stack, ppo, PPO["steps"], tmp_path)
    record_timing(stack, grpo, submitted_at, "grpo")
    record_timing(stack, ppo, submitted_at, "ppo")
    samples = stack.request("GET", f"/v1/jobs/{grpo['id']}/samples").json()["data"]
    assert samples and all(s["completion"] is not None for s in samples)


def test_openrlhf_reward_protocol(stack, tmp_path):
    submitted_at = time.time()
    job = stack.submit(make_spec(stack, "grpo", reward="openrlhf"))
    assert_learned_and_downloadable(stack, job, GRPO["steps"], tmp_path)
    record_timing(stack, job, submitted_at, "grpo_alone")  # the only job running: the per-step figure


def test_a_duplicate_delivery_is_ignored_and_cancel_stops_a_running_job(stack):
    job = stack.submit(make_spec(stack, "grpo", reward="slow", steps=200, checkpoint_every=0))
    wait_for(lambda: stack.metrics(job["id"], "reward/mean"), JOB_TIMEOUT_S, "a first metric", stack)
    # At-least-once delivery: the same job id arrives again while it runs. The live lease wins.
    stack.enqueue_again(job["id"], "cpu")
    wait_for(
        lambda: any(f"job {job['id']} not claimed" in w.tail(100_000) for w in stack.workers),
        60,
        "the duplicate delivery to be refused",
        stack,
    )
    running = stack.job(job["id"])
    assert running["status"] == "running" and running["attempts"] == 1
    resp = stack.request("POST", f"/v1/jobs/{job['id']}/cancel")
    assert resp.status_code == 200, resp.text
    asked = time.monotonic()
    done = stack.wait_status(job["id"], {"cancelled", "failed", "succeeded"}, 60)
    record("cancel.request_to_cancelled_s", round(time.monotonic() - asked, 2))
    assert done["status"] == "cancelled", done.get("error")
    assert time.monotonic() - asked < 30
    count = len(stack.metrics(job["id"]))
    time.sleep(QUIET_CHECK_S)
    assert len(stack.metrics(job["id"])) == count, "a metric arrived after the job was cancelled"
    assert stack.job(job["id"])["status"] == "cancelled"
    workers = [w.pid for w in stack.workers]
    wait_for(lambda: not training_children(workers), 20, "the training process to exit", stack)


def test_sigkill_worker_mid_job_resumes_on_another(stack):
    steps = 30
    job = stack.submit(make_spec(stack, "grpo", reward="slow", steps=steps, checkpoint_every=3))
    wait_for(
        lambda: (
            len(stack.metrics(job["id"], "reward/mean")) >= 4
            and stack.request("GET", f"/v1/jobs/{job['id']}/checkpoints").json()["data"]
        ),
        JOB_TIMEOUT_S,
        "step 4 and a registered checkpoint",
        stack,
    )
    holder = _holder(stack, job["id"])
    before = max(m["step"] for m in stack.metrics(job["id"], "reward/mean"))
    killed_at = time.time()
    holder.signal_group(signal.SIGKILL)  # the worker and anything in its group, as a lost machine would
    holder.proc.wait(timeout=10)
    stack.workers.remove(holder)
    # Its training process leads its own session: it must die with its supervisor, not train on.
    wait_for(
        lambda: not training_children([holder.pid]), 10, "the killed worker's training process to die", stack
    )
    stack.start_worker(f"worker-{len(stack.procs)}")

    def next_step_seen() -> bool:
        return any(m["step"] > before for m in stack.metrics(job["id"], "reward/mean"))

    wait_for(next_step_seen, JOB_TIMEOUT_S, "a step after the kill", stack)
    first_new = min(
        ts(m["created_at"]) for m in stack.metrics(job["id"], "reward/mean") if m["step"] > before
    )
    record("kill.kill_to_next_step_s", round(first_new - killed_at, 2))
    done = stack.wait_status(job["id"], {"succeeded", "failed", "cancelled"}, JOB_TIMEOUT_S)
    assert done["status"] == "succeeded", done.get("error")
    assert done["attempts"] == 2
    assert_one_row_per_step_and_name(stack, job["id"], steps)
    messages = [e["message"] for e in stack.events(job["id"])]
    assert any("resumed from checkpoint step-" in m for m in messages), messages
    # The replayed step's rewards came from the record the first attempt mirrored, not from the endpoint.
    assert stack.metrics(job["id"], "reward_endpoint/replayed"), "no step reused its recorded rewards"


def _holder(stack: Stack, job_id: str):
    claims = [e["message"] for e in stack.events(job_id) if e["message"].startswith("claimed by ")]
    pid = int(claims[-1].split()[2].rsplit(":", 1)[1])
    (holder,) = [w for w in stack.workers if w.pid == pid]
    return holder


def test_reward_endpoint_down_fails_the_job_and_the_worker_serves_on(stack):
    job = stack.submit(make_spec(stack, "grpo", reward="failing", steps=3))
    done = stack.wait_status(job["id"], {"succeeded", "failed", "cancelled"}, JOB_TIMEOUT_S)
    assert done["status"] == "failed"
    error = done["error"]
    assert error["code"] == "reward_endpoint_unreachable"
    assert stack.reward_urls["failing"].rstrip("/") in error["message"] and "500" in error["message"]
    assert all(w.alive() for w in stack.workers)
    after = stack.submit(make_spec(stack, "grpo", steps=2, checkpoint_every=0))
    assert stack.wait_status(after["id"], {"succeeded", "failed"}, JOB_TIMEOUT_S)["status"] == "succeeded"


def test_worker_shutdown_checkpoints_and_another_worker_resumes(stack):
    steps = 30
    # No periodic checkpoints: the only one to resume from is the one the shutdown writes.
    job = stack.submit(make_spec(stack, "grpo", reward="slow", steps=steps, checkpoint_every=0))
    wait_for(lambda: len(stack.metrics(job["id"], "reward/mean")) >= 2, JOB_TIMEOUT_S, "step 2", stack)
    holder = _holder(stack, job["id"])
    holder.signal_group(signal.SIGTERM)  # Celery's warm shutdown, as `docker stop` would send
    holder.proc.wait(timeout=120)
    stack.workers.remove(holder)
    ckpts = stack.request("GET", f"/v1/jobs/{job['id']}/checkpoints").json()["data"]
    assert ckpts and ckpts[0]["step"] >= 2, "the shutdown wrote and registered no checkpoint"
    stack.start_worker(f"worker-{len(stack.procs)}")
    done = stack.wait_status(job["id"], {"succeeded", "failed", "cancelled"}, JOB_TIMEOUT_S)
    assert done["status"] == "succeeded", done.get("error")
    assert done["attempts"] == 2
    assert_one_row_per_step_and_name(stack, job["id"], steps)
    messages = [e["message"] for e in stack.events(job["id"])]
    assert any(f"resumed from checkpoint step-{ckpts[0]['step']:06d}" in m for m in messages), messages


def test_pause_then_resume_continues_from_the_pause_checkpoint(stack):
    steps = 30
    job = stack.submit(make_spec(stack, "grpo", reward="slow", steps=steps, checkpoint_every=0))
    wait_for(lambda: len(stack.metrics(job["id"], "reward/mean")) >= 2, JOB_TIMEOUT_S, "step 2", stack)
    assert stack.request("POST", f"/v1/jobs/{job['id']}/pause").status_code == 200
    paused = stack.wait_status(job["id"], {"paused", "failed", "succeeded"}, 60)
    assert paused["status"] == "paused", paused.get("error")
    ckpts = stack.request("GET", f"/v1/jobs/{job['id']}/checkpoints").json()["data"]
    assert ckpts, "pausing wrote and registered no checkpoint"
    assert stack.request("POST", f"/v1/jobs/{job['id']}/resume").status_code == 200
    done = stack.wait_status(job["id"], {"succeeded", "failed", "cancelled"}, JOB_TIMEOUT_S)
    assert done["status"] == "succeeded", done.get("error")
    assert_one_row_per_step_and_name(stack, job["id"], steps)


def test_a_brief_api_outage_loses_nothing(stack):
    # Four seconds against a five-second lease: the service may or may not reap the job meanwhile; either
    # way the job must end with every step's metrics and samples exactly once.
    steps = 40
    job = stack.submit(make_spec(stack, "grpo", reward="slow", steps=steps, checkpoint_every=4))
    wait_for(lambda: len(stack.metrics(job["id"], "reward/mean")) >= 2, JOB_TIMEOUT_S, "step 2", stack)
    (api,) = [p for p in stack.procs if p.name == "api"]
    api.signal_group(signal.SIGSTOP)  # requests time out meanwhile: the worker buffers and backs off
    try:
        time.sleep(4.0)
    finally:
        api.signal_group(signal.SIGCONT)
    logs = "".join(w.tail(1_000_000) for w in stack.procs if w.name.startswith("worker"))
    assert "service unreachable, buffering" in logs or "heartbeat failed" in logs, "the outage went unnoticed"
    done = stack.wait_status(job["id"], {"succeeded", "failed", "cancelled"}, JOB_TIMEOUT_S)
    assert done["status"] == "succeeded", done.get("error")
    assert_one_row_per_step_and_name(stack, job["id"], steps)
    for step in range(1, steps + 1):
        got = stack.request("GET", f"/v1/jobs/{job['id']}/samples", params={"step": step}).json()
        assert got["step"] == step and got["data"], f"the samples of step {step} are missing"


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_two_process_job_runs_under_accelerate_launch_and_stops_with_a_checkpoint(
    stack, strategy, tmp_path
):
    # `resources.gpus: 2` on the cpu queue: two torchrun ranks with the gloo backend, what a CPU-only CI can
    # run of the multi-GPU path. Cancel reaches the ranks, which checkpoint and exit; the launcher follows.
    # Under fsdp each rank holds half the model: the checkpoint gathers it and keeps each rank's optimizer.
    spec = make_spec(stack, "grpo", reward="slow", steps=200, checkpoint_every=0)
    spec["resources"] = {"gpus": 2, "queue": "cpu", "strategy": strategy}
    job = stack.submit(spec)
    wait_for(lambda: len(stack.metrics(job["id"], "reward/mean")) >= 2, JOB_TIMEOUT_S, "two steps", stack)
    assert stack.request("POST", f"/v1/jobs/{job['id']}/cancel").status_code == 200
    done = stack.wait_status(job["id"], {"cancelled", "failed", "succeeded"}, 90)
    assert done["status"] == "cancelled", done.get("error")
    ckpts = stack.request("GET", f"/v1/jobs/{job['id']}/checkpoints").json()["data"]
    assert ckpts, "the ranks wrote no checkpoint when stopped"
    workers = [w.pid for w in stack.workers]
    wait_for(lambda: not training_children(workers), 30, "the ranks and the launcher to exit", stack)
    (log,) = list(stack.root.glob(f"worker-*/worker/jobs/{job['id']}/attempt-*/child.log"))
    assert "got signal: 15" not in log.read_text(), "the launcher was stopped instead of its ranks"
    if strategy == "fsdp":  # the gathered model downloads and loads like any other
        assert_archive_loads(stack, job["id"], tmp_path)


def test_a_job_scored_by_graders_alone_learns_and_reports_its_components(stack, tmp_path):
    """No reward endpoint in the spec: a built-in grader scores the letter task in the training process."""
    spec = make_spec(stack, "grpo")
    del spec["reward"]
    spec["rewards"] = [
        {"type": "string_check", "name": "has_a", "operation": "like", "reference": "{{label}}"}
    ]
    job = stack.submit(spec)
    assert_learned_and_downloadable(stack, job, GRPO["steps"], tmp_path)
    steps = sorted(m["step"] for m in stack.metrics(job["id"], "reward/has_a/mean"))
    assert steps == list(range(1, GRPO["steps"] + 1))
    samples = stack.request("GET", f"/v1/jobs/{job['id']}/samples").json()["data"]
    assert samples and all(s["components"] == {"has_a": s["reward"]} for s in samples)


def test_held_out_evaluation_chooses_the_best_checkpoint_and_retention_lets_the_rest_go(stack, tmp_path):
    """Evaluation at step 0, every N and the end through the whole stack: metrics, eval samples by split,
    a checkpoint per evaluation registered with its eval metrics, the best one marked and kept, the others
    beyond keep_last deleted from the store and answering 410."""
    spec = make_spec(stack, "grpo", steps=6, checkpoint_every=0)
    del spec["reward"]
    spec["rewards"] = [
        {"type": "string_check", "name": "has_a", "operation": "like", "reference": "{{label}}"}
    ]
    spec["evaluation"] = {
        "dataset": {"rows": [{"prompt": p, "label": "a"} for p in PROMPTS[:3]]},
        "every_steps": 2,
    }
    spec["checkpoints"] = {"keep_last": 1, "keep_best": 1}
    job = stack.submit(spec)
    done = stack.wait_status(job["id"], {"succeeded", "failed", "cancelled"}, JOB_TIMEOUT_S)
    assert done["status"] == "succeeded", done.get("error")

    evals = stack.metrics(job["id"], "eval/reward/mean")
    assert sorted(m["step"] for m in evals) == [0, 2, 4, 6]
    eval_samples = stack.request("GET", f"/v1/jobs/{job['id']}/samples", params={"split": "eval", "step": 4})
    assert eval_samples.status_code == 200, eval_samples.text
    assert len(eval_samples.json()["data"]) == 3
    train_samples = stack.request("GET", f"/v1/jobs/{job['id']}/samples", params={"step": 4}).json()["data"]
    assert len(train_samples) > 3  # the training split is the default and is not mixed with eval

    ckpts = stack.request("GET", f"/v1/jobs/{job['id']}/checkpoints").json()["data"]
    assert sorted(c["step"] for c in ckpts) == [0, 2, 4, 6]
    assert all("eval/reward/mean" in c["metrics"] for c in ckpts)
    (best,) = [c for c in ckpts if c["best"]]
    top = max(c["metrics"]["eval/reward/mean"] for c in ckpts)
    assert best["metrics"]["eval/reward/mean"] == top and not best["deleted"]
    kept = {c["step"] for c in ckpts if not c["deleted"]}
    assert kept == {6, best["step"]}
    gone = next(c for c in ckpts if c["deleted"])
    resp = stack.request("GET", f"/v1/jobs/{job['id']}/checkpoints/{gone['id']}/archive")
    assert resp.status_code == 410 and resp.json()["detail"]["code"] == "checkpoint_deleted"
    (listed,) = stack.request("GET", f"/v1/jobs/{job['id']}/checkpoints", params={"best": "true"}).json()[
        "data"
    ]
    assert listed["id"] == best["id"]
