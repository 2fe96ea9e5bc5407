"""`rlft train SPEC --local`: a job on this machine, with a real HTTP reward server or a Python callable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from rlft.localstack import LETTER_APP, LocalStack
from rlft_contracts.localproc import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def letter_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    logs = tmp_path_factory.mktemp("letter-server")
    with LocalStack(env=dict(os.environ), log_dir=logs, cwd=REPO) as stack:
        yield stack.start_reward_server(LETTER_APP, "127.0.0.1", free_port())


def _spec(tmp_path: Path, model: str, **reward) -> Path:
    spec = yaml.safe_load((REPO / "examples/specs/grpo_letter.yaml").read_text())
    spec["model"]["name_or_path"] = model
    spec["hyperparameters"].update(steps=12, checkpoint_every=5)
    spec["reward"] = reward
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _rlft(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "rlft.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_local_run_against_an_http_reward_server_learns_and_checkpoints(
    tmp_path, tiny_model_path, letter_server
):
    spec = _spec(tmp_path, tiny_model_path, url=letter_server)
    proc = _rlft("train", str(spec), "--local", "--output", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in (tmp_path / "out/metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 13))
    rewards = [x["reward/mean"] for x in lines]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.3, rewards
    assert lines[-1]["reward_endpoint/requests"] >= 1
    assert (tmp_path / "out/checkpoints/step-000012/manifest.json").exists()
    assert (tmp_path / "out/samples.jsonl").read_text().count("\n") >= 12


def test_local_run_with_a_python_reward_and_resume(tmp_path, tiny_model_path):
    (tmp_path / "myreward.py").write_text(
        "def reward(prompts, completions, **kw):\n"
        "    return [c.count('a') / max(len(c), 1) for c in completions]\n"
    )
    spec = _spec(tmp_path, tiny_model_path)
    proc = _rlft("train", str(spec), "--local", "-o", "out", "--reward-fn", "myreward:reward", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Running again finds the final checkpoint and has nothing left to do; metrics are not duplicated.
    proc = _rlft("train", str(spec), "--local", "-o", "out", "--reward-fn", "myreward:reward", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [json.loads(x)["step"] for x in (tmp_path / "out/metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))


def test_local_run_explains_bad_input(tmp_path, tiny_model_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name_or_path: x}\ndataset: {rows: []}\n")
    proc = _rlft("train", str(bad), "--local", "-o", "out", cwd=tmp_path)
    assert proc.returncode != 0
    assert "dataset.rows is empty" in proc.stderr
    spec = _spec(tmp_path, tiny_model_path)  # no reward URL and no --reward-fn
    proc = _rlft("train", str(spec), "--local", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 1 and "reward.url" in proc.stderr and "--reward-fn" in proc.stderr
    missing = _spec(tmp_path, str(tmp_path / "no-such-model"), url="http://127.0.0.1:9")
    proc = _rlft("train", str(missing), "--local", "-o", "out2", cwd=tmp_path)
    assert proc.returncode == 1 and "model_load_failed" in proc.stderr
