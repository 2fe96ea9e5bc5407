"""Helpers for starting the project's servers as local processes (demo, `rlft up`, tests, benchmarks)."""

from __future__ import annotations

import socket
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
