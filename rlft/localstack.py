"""The product's processes on one machine: API, workers and reward servers as children sharing one
environment, stopped as a whole. ``rlft up``, ``make demo`` (:mod:`rlft.demo`) and the tests that need real
processes start their stacks through :class:`LocalStack`.

The database and broker are whatever the environment names: :func:`stack_env` gives the embedded defaults
(SQLite database and broker under the data directory); a caller passes ``RLFT_DATABASE_URL`` and
``RLFT_BROKER_URL`` for Postgres and Redis.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from rlft_contracts.localproc import uvicorn_command

TINY_MODEL = Path(".models/tiny")
# The local stacks' model root (RLFT_MODEL_ROOTS): outside their data directories, which jobs may never read.
MODEL_ROOT = TINY_MODEL.parent
LETTER_APP = "examples.rewards.letter:app"  # importable from the repository root


class StackError(RuntimeError):
    """A child process failed to start or died; the message points at its log."""


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, chars: int = 3000) -> str:
        """The end of the child's log (stdout and stderr)."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def signal_group(self, sig: int) -> None:
        """Signal the child's process group: the child and whatever it started in its session."""
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


@dataclass
class LocalStack:
    """API, workers and reward servers as child processes sharing one environment; stopped as a whole."""

    env: dict[str, str]
    log_dir: Path
    cwd: Path | None = None
    children: list[Child] = field(default_factory=list)

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def spawn(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            # A session of its own: the group (worker + its training process) is signalled as one, and a
            # Ctrl-C in the terminal reaches only us, so that we stop the children in order.
            proc = subprocess.Popen(
                argv,
                cwd=self.cwd,
                env={**self.env, **(extra_env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def start_api(
        self, host: str, port: int, extra_env: dict[str, str] | None = None, timeout: float = 90.0
    ) -> str:
        child = self.spawn(
            "api", uvicorn_command("service.app:create_app", port, host=host, factory=True), extra_env
        )
        url = f"http://{host}:{port}"
        self.wait_http(f"{url}/healthz", child, timeout=timeout)
        return url

    def start_worker(
        self,
        queues: str = "gpu,cpu",
        *,
        name: str = "worker",
        hostname: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> Child:
        """A worker through ``rlft worker`` (Celery, solo pool); it is ready when its log says ``ready.``."""
        argv = [sys.executable, "-m", "rlft", "worker", "--queues", queues]
        if hostname:
            argv += ["--hostname", hostname]
        return self.spawn(name, argv, extra_env)

    def start_reward_server(
        self,
        app: str,
        host: str,
        port: int,
        *,
        name: str | None = None,
        extra_env: dict[str, str] | None = None,
        timeout: float = 90.0,
    ) -> str:
        name = name or "reward-" + app.split(":")[0].rsplit(".", 1)[-1]
        child = self.spawn(name, uvicorn_command(app, port, host=host), extra_env)
        url = f"http://{host}:{port}"
        # It serves POST / only: any answer means it is up.
        self.wait_http(url, child, timeout=timeout, any_status=True)
        return url

    def wait_http(self, url: str, child: Child, *, timeout: float = 90.0, any_status: bool = False) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if answers(url, ok_only=not any_status):
                return
            time.sleep(0.3)
        raise StackError(f"{child.name} did not answer at {url} within {timeout:.0f}s; see {child.log}")

    def check_alive(self) -> None:
        for child in self.children:
            code = child.proc.poll()
            if code is not None:
                raise StackError(f"{child.name} exited with code {code}; see {child.log}:\n{tail(child.log)}")

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM every child's process group (newest first), then SIGKILL what is left after ``grace``."""
        for child in reversed(self.children):
            child.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in reversed(self.children):
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # The group too: a training grandchild may outlive its supervisor.
            child.signal_group(signal.SIGKILL)
            child.proc.wait()
        self.children.clear()


def answers(url: str, *, ok_only: bool = False, timeout: float = 2.0) -> bool:
    """Does something answer at ``url`` (with a 200 when ``ok_only``)?"""
    try:
        resp = httpx.get(url, timeout=timeout)
    except httpx.TransportError:
        return False
    return resp.status_code == 200 if ok_only else True


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_cli(env: dict[str, str], *args: str) -> str:
    """Run ``rlft ARGS`` in a child with ``env``; return its stdout or raise with its stderr."""
    res = subprocess.run([sys.executable, "-m", "rlft", *args], env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise StackError(f"`rlft {' '.join(args)}` failed: {res.stderr.strip() or res.stdout.strip()}")
    return res.stdout.strip()


def stack_env(data_dir: Path, api_url: str, **extra: str) -> dict[str, str]:
    """The environment of a local stack: dev mode (generated secrets), embedded database and broker, and
    ``.models/`` as the model root, so that jobs may name the tiny model by path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLFT_")}
    env.update(
        {
            "RLFT_DATA_DIR": str(data_dir.resolve()),
            "RLFT_DEV_MODE": "1",
            "RLFT_ALLOW_PRIVATE_REWARD_URLS": "1",
            "RLFT_API_URL": api_url,
            "RLFT_MODEL_ROOTS": str(MODEL_ROOT.resolve()),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def interrupt_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C, so that ``with LocalStack(...)`` stops the children either way."""

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)
