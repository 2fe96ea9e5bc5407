"""`make demo` runs `python -m rlft.demo`: the product end to end; it exits 0 and leaves nothing running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.conftest import processes_with_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_the_demo_trains_and_the_reward_rises(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLFT_")}
    env["RLFT_DEMO_DIR"] = str(tmp_path / "demo")
    res = subprocess.run(
        [sys.executable, "-m", "rlft.demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=840
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "reward rose: demo passed" in res.stdout
    assert "AutoModelForCausalLM.from_pretrained(" in res.stdout
    assert (tmp_path / "demo" / "model" / "config.json").is_file()
    # The children carry the demo's data directory in their environment; none of them may outlive it.
    assert processes_with_env(f"RLFT_DATA_DIR={(tmp_path / 'demo').resolve()}") == []
