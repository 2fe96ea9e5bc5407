"""Two data-parallel processes under `accelerate launch` on CPU finish with identical weights.

accelerate 1.x runs `--cpu --num_processes 2` as ONE process unless mpirun is configured; its torchrun path
(`--multi_gpu`) on a machine without CUDA gives two real processes with the gloo backend, which is what a
CPU-only CI can exercise of DDP. The engine itself picks the device through `Accelerator`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlft_contracts.localproc import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["grpo", "grpo-eval", "ppo-shared", "ppo-lora"])
def test_two_process_accelerate_launch_keeps_ranks_identical(tmp_path, tiny_model_path, case):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",  # not the default 29500: another run on this machine may hold it
        str(free_port()),
        str(REPO / "tests/rlcore/ddp_script.py"),
        tiny_model_path,
        str(tmp_path),
        case,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0 = (tmp_path / "rank0.txt").read_text().split()
    r1 = (tmp_path / "rank1.txt").read_text().split()
    assert r0[0] == r1[0] == "2"  # both saw a world of two
    assert r0[1] == r1[1]  # same start
    assert r0[2] == r1[2]  # same end
    assert r0[2] != r0[1]  # and it trained
    if case == "grpo-eval":  # the ranks split the 3 prompts (2 + 1) and both return every rank's results
        e0, e1 = (json.loads((tmp_path / f"eval{r}.json").read_text()) for r in (0, 1))
        assert e0 == e1 and e0["groups"] == [0, 0, 1, 1, 2, 2]
        assert set(e0["metrics"]) >= {"eval/reward/mean", "eval/pass@k", "eval/mean@k"}
