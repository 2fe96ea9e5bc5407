"""`rlft worker --gpus N`: workers on one machine take GPUs of their own through lock files."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rlft.cli.common import CLIError
from rlft.cli.stack import claim_gpus, visible_gpus


def test_workers_take_distinct_gpus_until_none_is_free(tmp_path):
    gpus = ["GPU-aaa", "GPU-bbb", "GPU-ccc"]
    first = claim_gpus(1, tmp_path, gpus)
    second = claim_gpus(2, tmp_path, gpus)
    assert first == ["GPU-aaa"] and second == ["GPU-bbb", "GPU-ccc"]
    with pytest.raises(CLIError, match="only 0 of the 3 GPU"):
        claim_gpus(1, tmp_path, gpus)


def test_a_gpu_is_free_again_when_its_worker_exits(tmp_path):
    code = (
        "import pathlib; from rlft.cli.stack import claim_gpus; "
        f"claim_gpus(1, pathlib.Path({str(tmp_path)!r}), ['0'])"
    )
    for _ in range(2):  # the second process can take it only if the first one's exit released it
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert claim_gpus(1, tmp_path, ["0"]) == ["0"]


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert visible_gpus() == ["2", "3"]
