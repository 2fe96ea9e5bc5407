"""The training process reports through its outbox: every ending is a result line with a code."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from rlcore.errors import RewardEndpointUnreachable
from worker.child import OutboxCallback
from worker.outbox import OutboxWriter
from worker.outcome import classify


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_spec_that_does_not_validate_ends_with_a_failed_result(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"model": {"name_or_path": ""}, "dataset": {"rows": []}}))
    outbox = tmp_path / "outbox.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker.child",
            "--job-id",
            "j",
            "--spec-file",
            str(spec),
            "--output-dir",
            str(tmp_path / "out"),
            "--outbox",
            str(outbox),
            "--store",
            str(tmp_path / "store"),
            "--parent-pid",
            str(os.getpid()),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    (result,) = _lines(outbox)
    assert result["type"] == "result" and result["status"] == "failed"
    assert result["error"]["code"] == "invalid_spec" and "does not validate" in result["error"]["message"]


def test_errors_map_to_job_codes():
    assert (
        classify(RewardEndpointUnreachable("http://x/ answered 500"))["code"] == "reward_endpoint_unreachable"
    )
    assert classify(MemoryError())["code"] == "out_of_memory"
    assert classify(RuntimeError("CUDA out of memory. Tried to allocate"))["code"] == "out_of_memory"
    other = classify(KeyError("boom"))
    assert other["code"] == "internal_error" and "KeyError" in other["message"]


def test_metrics_and_samples_are_json_safe(tmp_path):
    # NUL in sample text travels as is: the service stores it as U+FFFD (tests/service, both databases).
    outbox = OutboxWriter(tmp_path / "outbox.jsonl")
    cb = OutboxCallback(outbox, job_id="j", store=str(tmp_path / "store"), output_dir=tmp_path / "out")
    cb.on_step_end(3, {"reward/mean": 0.5, "kl/mean": float("nan"), "x": float("inf")})
    cb.on_samples(
        3,
        [
            {
                "index": 0,
                "group": 0,
                "prompt": "p\x00",
                "completion": "a\x00b",
                "reward": float("nan"),
                "label": "a",
                "error": None,
            }
        ],
    )
    outbox.close()
    metrics, samples = _lines(tmp_path / "outbox.jsonl")
    assert metrics == {"type": "metrics", "step": 3, "metrics": {"reward/mean": 0.5}}
    (sample,) = samples["samples"]
    assert sample["completion"] == "a\x00b" and sample["prompt"] == "p\x00"
    assert sample["step"] == 3 and sample["reward"] is None
