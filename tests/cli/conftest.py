"""A real API process (uvicorn), a real reward server, and a stand-in worker that speaks the documented
worker protocol (/internal/v1) so that jobs get metrics, checkpoints and a final state without training
anything. Shared by the client and CLI tests of this folder.

The API runs on the embedded defaults (SQLite database and broker), and a second time on Postgres and Redis
when ``RLFT_TEST_DATABASE_URL`` and ``RLFT_TEST_REDIS_URL`` are set: a database of its own, created and
dropped here, and a Redis database number of its own, flushed before and after.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.databases import redis_database, throwaway_database
from tests.support.specs import letter_spec as support_letter_spec
from tests.support.stacks import Api, api_stack

ROOT = Path(__file__).resolve().parents[2]
# Redis database numbers of the CLI tests; the e2e tests use others (tests/e2e/conftest.py).
CLI_REDIS_DBS = (13, 8, 7)


@pytest.fixture(scope="session", params=["embedded", "postgres+redis"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    data = tmp_path_factory.mktemp("rlft-api")
    with _backends(request.param) as backends, api_stack(data, backends) as api:
        yield api


@contextmanager
def _backends(kind: str) -> Iterator[dict[str, str]]:
    """RLFT_* settings of the database and broker: none for the embedded defaults."""
    if kind == "embedded":
        yield {}
        return
    db_url, redis_url = os.environ.get("RLFT_TEST_DATABASE_URL"), os.environ.get("RLFT_TEST_REDIS_URL")
    if not (db_url and redis_url):
        pytest.skip("RLFT_TEST_DATABASE_URL and RLFT_TEST_REDIS_URL are not set")
    with (
        throwaway_database(db_url, "rlft_cli") as database,
        redis_database(redis_url, CLI_REDIS_DBS, "rlft:cli:session") as broker,
    ):
        yield {"RLFT_DATABASE_URL": database, "RLFT_BROKER_URL": broker}


def letter_spec(reward_url: str, **hyperparameters: Any) -> dict[str, Any]:
    """The CLI tests' job: a hub id the stand-in worker never loads, two prompts, three short steps."""
    hyper = {"steps": 3, "prompts_per_step": 2, "group_size": 2, **hyperparameters}
    return support_letter_spec("tiny-qwen", reward_url, prompts=("Say:", "Go:"), **hyper)


class StandInWorker:
    """Plays a worker's part over /internal/v1: claim, report metrics and a checkpoint, finish."""

    def __init__(self, api: Api):
        self.api = api
        self.http = httpx.Client(
            base_url=api.url, timeout=30, headers={"Authorization": f"Bearer {api.worker_secret}"}
        )

    def _post(self, job_id: str, what: str, body: dict[str, Any]) -> Any:
        resp = self.http.post(f"/internal/v1/jobs/{job_id}/{what}", json=body)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def claim(self, job_id: str) -> int:
        return self._post(job_id, "claim", {"worker_id": "stand-in"})["fence"]

    def report(self, job_id: str, fence: int, step: int, reward: float) -> None:
        points = [
            {"step": step, "name": "reward/mean", "value": reward},
            {"step": step, "name": "kl/mean", "value": 0.01 * step},
        ]
        self._post(job_id, "metrics", {"fence": fence, "points": points})

    def finish(self, job_id: str, fence: int, status: str = "succeeded") -> None:
        self._post(job_id, "finish", {"fence": fence, "status": status, "error": None})

    def run(self, job_id: str, steps: int = 3) -> dict[int, float]:
        """Report ``steps`` steps with a rising reward and a checkpoint of a real tiny model at the last."""
        fence = self.claim(job_id)
        rewards = {s: 0.1 * s for s in range(1, steps + 1)}
        for step, reward in rewards.items():
            self.report(job_id, fence, step, reward)
        self._post(job_id, "checkpoints", {"fence": fence, **self._checkpoint(job_id, steps)})
        self.finish(job_id, fence)
        return rewards

    def _checkpoint(self, job_id: str, step: int) -> dict[str, Any]:
        from rlcore.testing import make_tiny_model

        location = self.api.data_dir / "artifacts" / job_id / f"step-{step:06d}"
        make_tiny_model(location / "model", "tiny")
        files = []
        for path in sorted(p for p in location.rglob("*") if p.is_file()):
            data = path.read_bytes()
            files.append(
                {
                    "path": path.relative_to(location).as_posix(),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                }
            )
        manifest = hashlib.sha256(repr(files).encode()).hexdigest()
        return {
            "step": step,
            "location": str(location),
            "manifest_sha256": manifest,
            "size_bytes": sum(f["size"] for f in files),
            "files": files,
            "metrics": {},
        }


@pytest.fixture(scope="session")
def finished_job(api: Api) -> tuple[str, dict[int, float]]:
    """A job that went queued → running → succeeded with 3 metric steps and a checkpoint at step 3."""
    from rlft.client import Client

    with Client(api.url, api.key) as client:
        job = client.jobs.create(letter_spec(api.reward_url))
    return job.id, StandInWorker(api).run(job.id)


class DroppingProxy:
    """A TCP proxy whose first connection is cut in the middle of the response's ``nth`` SSE event.

    Every later connection is relayed whole. Requests are made ``Connection: close`` so that each
    connection carries one request.
    """

    def __init__(self, upstream_port: int, nth: int = 3):
        self.upstream_port = upstream_port
        self.nth = nth
        self.connections = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._relay, args=(conn, self.connections == 1), daemon=True).start()

    def _relay(self, conn: socket.socket, cut: bool) -> None:
        with conn, socket.create_connection(("127.0.0.1", self.upstream_port)) as up:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            up.sendall(request.replace(b"keep-alive", b"close"))
            received = b""
            while chunk := up.recv(65536):
                received += chunk
                if cut and received.count(b"id: ") >= self.nth:
                    # Half-way into the nth event: its blank line never arrives, so it must not count.
                    conn.sendall(received[: _nth_index(received, self.nth) + 8])
                    return
                if not cut:
                    conn.sendall(chunk)

    def close(self) -> None:
        self.server.close()


def _nth_index(data: bytes, n: int) -> int:
    at = -1
    for _ in range(n):
        at = data.index(b"id: ", at + 1)
    return at


def processes_with_env(needle: str) -> list[int]:
    """Pids of live processes whose environment holds ``needle`` (NAME=VALUE): what a test left running."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle.encode() + b"\0" in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found
