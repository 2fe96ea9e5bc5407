"""`rlft up`: API + worker + reward server in one command, a dev key the CLI finds, all stopped on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rlft_contracts.localproc import free_port
from tests.cli.conftest import processes_with_env
from tests.support.waiting import wait_http

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def _running(proc: subprocess.Popen) -> None:
    assert proc.poll() is None, proc.stdout.read()


def test_up_serves_everything_and_stops_everything(tmp_path):
    data = (tmp_path / "data").resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLFT_")}
    env["RLFT_DATA_DIR"] = str(data)
    port, reward_port = free_port(), free_port()
    argv = [sys.executable, "-m", "rlft", "up", "--port", str(port), "--reward-server"]
    argv += ["--reward-port", str(reward_port)]
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_http(f"http://127.0.0.1:{reward_port}", 90, ok_only=False, alive=lambda: _running(proc))
        wait_http(f"http://127.0.0.1:{port}/healthz", 90, alive=lambda: _running(proc))
        key = (data / "dev-api-key").read_text().strip()
        # The CLI finds the dev key on its own (same data directory, no RLFT_API_KEY).
        jobs = subprocess.run(
            [sys.executable, "-m", "rlft", "jobs", "--api-url", f"http://127.0.0.1:{port}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert jobs.returncode == 0, jobs.stderr
        assert len(processes_with_env(f"RLFT_DATA_DIR={data}")) >= 3  # api, worker, reward server
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output
    assert key in output and f"http://127.0.0.1:{port}/docs" in output
    assert f"http://127.0.0.1:{port}/ui/" in output  # the dashboard
    assert processes_with_env(f"RLFT_DATA_DIR={data}") == []
