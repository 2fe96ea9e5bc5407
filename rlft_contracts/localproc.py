"""Helpers for starting the project's servers as local processes (demo, `rlft up`, tests, benchmarks)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the OS picks it); good enough for local servers and tests."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def uvicorn_command(
    app: str, port: int, *, host: str = "127.0.0.1", factory: bool = False, log_level: str = "warning"
) -> list[str]:
    """The argv that serves ``app`` (``module:attr``) with this interpreter's uvicorn."""
    cmd = [sys.executable, "-m", "uvicorn"]
    if factory:
        cmd.append("--factory")
    return [*cmd, app, "--host", host, "--port", str(port), "--log-level", log_level]


def visible_gpus() -> list[str] | None:
    """The GPUs this process may use, without importing torch: CUDA_VISIBLE_DEVICES when set (CUDA stops at
    the first negative id, so "" and "-1" hide them all), else nvidia-smi's UUIDs; None when nvidia-smi
    cannot be run (no driver: a CPU machine)."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is not None:
        ids = []
        for gpu in (g.strip() for g in value.split(",")):
            if not gpu or gpu.startswith("-"):
                break
            ids.append(gpu)
        return ids
    try:
        listed = subprocess.run(
            ["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [line.strip() for line in listed.splitlines() if line.strip()]
