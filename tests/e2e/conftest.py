"""The whole stack as separate processes: the API (uvicorn), Celery workers, reward servers (uvicorn).

On Postgres and Redis when ``RLFT_TEST_DATABASE_URL`` / ``RLFT_TEST_REDIS_URL`` are set (CI), on the
embedded defaults (SQLite database, SQLite broker) otherwise. Postgres gets a database of its own, created
and dropped here; Redis a database number of its own, flushed before and after. Each worker has its own data
directory, as if on its own machine: they share only the broker, the API and the artifact store.

Every process runs in its own session so that a test can SIGKILL a worker exactly as a machine loss would,
and everything is torn down at the end, even on failure. Logs go to files under the session's temporary
directory; a failing wait shows the tail of each.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from rlcore.testing import make_tiny_model
from rlft.localproc import free_port, uvicorn_command

REPO = Path(__file__).resolve().parents[2]
LEASE_SECONDS = 5
E2E_REDIS_DBS = (14, 15, 12, 11, 10, 9)
E2E_REDIS_LOCK = "rlft:e2e:session"
TERMINAL = {"succeeded", "failed", "cancelled", "paused"}


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass


@dataclass
class Stack:
    root: Path
    env: dict[str, str]
    api_url: str
    model_path: str
    reward_urls: dict[str, str] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    workers: list[Proc] = field(default_factory=list)
    http: httpx.Client | None = None

    # -- processes ---------------------------------------------------------------------------------------

    def spawn(self, name: str, cmd: list[str], extra_env: dict[str, str] | None = None) -> Proc:
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                cmd,
                cwd=REPO,
                env={**self.env, **(extra_env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def start_worker(self, name: str) -> Proc:
        data_dir = self.root / name
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker.celery_app",
            "worker",
            "-Q",
            "gpu,cpu",
            "--pool",
            "solo",
            "--concurrency",
            "1",
            "-n",
            f"{name}@%h",
            "--loglevel",
            "INFO",
        ]
        proc = self.spawn(name, cmd, {"RLFT_DATA_DIR": str(data_dir)})
        wait_for(lambda: "ready." in proc.tail(100_000), 120, f"worker {name} ready", self)
        self.workers.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(
            f"----- {p.name} (pid {p.pid}, alive={p.alive()}) -----\n{p.tail()}" for p in self.procs
        )

    def teardown(self) -> None:
        for proc in self.procs:
            proc.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs:
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.signal_group(signal.SIGKILL)
                proc.popen.wait(timeout=10)
        # Training children lead their own sessions; they die with their worker, but make sure.
        for pid in training_children([p.pid for p in self.procs]):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # -- the public API ----------------------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        assert self.http is not None
        return self.http.request(method, path, **kwargs)

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        resp = self.request("POST", "/v1/jobs", json=spec)
        assert resp.status_code == 201, resp.text
        return resp.json()

    def job(self, job_id: str) -> dict[str, Any]:
        resp = self.request("GET", f"/v1/jobs/{job_id}")
        assert resp.status_code == 200, resp.text
        return resp.json()

    def metrics(self, job_id: str, names: str | None = None) -> list[dict[str, Any]]:
        params = {"names": names} if names else {}
        resp = self.request("GET", f"/v1/jobs/{job_id}/metrics", params=params)
        assert resp.status_code == 200, resp.text
        return resp.json()["data"]

    def events(self, job_id: str) -> list[dict[str, Any]]:
        resp = self.request("GET", f"/v1/jobs/{job_id}/events", params={"limit": 1000})
        assert resp.status_code == 200, resp.text
        return resp.json()["data"]

    def enqueue_again(self, job_id: str, queue: str) -> None:
        """Send the job's message a second time, as a broker redelivery would."""
        from rlft_contracts.settings import Settings
        from service.queue import JobQueue

        settings = Settings(data_dir=self.root / "api", broker_url=self.env["RLFT_BROKER_URL"], dev_mode=True)
        assert JobQueue(settings).enqueue(job_id, queue)

    def wait_status(self, job_id: str, statuses: set[str], timeout_s: float) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def reached() -> bool:
            found.update(self.job(job_id))
            return found["status"] in statuses

        wait_for(reached, timeout_s, f"job {job_id} to reach {sorted(statuses)}", self, lambda: found)
        return found


def wait_for(
    check: Callable[[], bool],
    timeout_s: float,
    what: str,
    stack: Stack | None = None,
    context: Callable[[], Any] | None = None,
    every_s: float = 0.25,
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every_s)
    detail = f"\nlast seen: {context()}" if context else ""
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}{detail}\n{stack.logs() if stack else ''}")


def training_children(parent_pids: list[int]) -> list[int]:
    """Pids of live ``worker.child`` processes started by the given supervisors (worker processes).

    Filtered by ``--parent-pid``: other test sessions on the same machine run training processes too.
    """
    wanted = {str(pid).encode() for pid in parent_pids}
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"worker.child" not in argv or b"--parent-pid" not in argv or state == "Z":
            continue
        if argv[argv.index(b"--parent-pid") + 1] in wanted:
            pids.append(int(entry.name))
    return pids


# -- the backing services ---------------------------------------------------------------------------------


def _postgres_database() -> Iterator[str | None]:
    url = os.environ.get("RLFT_TEST_DATABASE_URL")
    if not url:
        yield None
        return
    import psycopg

    name = f"rlft_e2e_{uuid.uuid4().hex[:10]}"
    admin = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(url)
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _redis_broker(root: Path) -> Iterator[str]:
    url = os.environ.get("RLFT_TEST_REDIS_URL")
    if not url:
        yield f"sqla+sqlite:///{root / 'broker.db'}"
        return
    import redis

    # Queue names are fixed (gpu, cpu), so two sessions on one Redis database would take each other's
    # jobs: each session locks a database number of its own (the CLI tests use 13).
    token = uuid.uuid4().hex
    for db in E2E_REDIS_DBS:
        own = urlunsplit(urlsplit(url)._replace(path=f"/{db}"))
        client = redis.Redis.from_url(own)
        if client.set(E2E_REDIS_LOCK, token, nx=True, ex=3600):
            break
        client.close()
    else:
        pytest.skip(f"every Redis database in {list(E2E_REDIS_DBS)} is held by another e2e session")
    for key in client.scan_iter():
        if key != E2E_REDIS_LOCK.encode():
            client.delete(key)
    try:
        yield own
    finally:
        client.flushdb()
        client.close()


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("e2e")
    model = make_tiny_model(root / "models" / "tiny", "tiny")  # under the stack's model root
    db_gen, broker_gen = _postgres_database(), _redis_broker(root)
    db_url, broker_url = next(db_gen), next(broker_gen)
    api_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLFT_")}
    env.update(
        {
            "RLFT_DEV_MODE": "1",
            "RLFT_WORKER_SECRET": secrets.token_urlsafe(24),
            "RLFT_ENCRYPTION_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
            "RLFT_BROKER_URL": broker_url,
            "RLFT_ARTIFACT_STORE": str(root / "artifacts"),
            "RLFT_API_URL": f"http://127.0.0.1:{api_port}",
            "RLFT_LEASE_SECONDS": str(LEASE_SECONDS),
            "RLFT_ALLOW_PRIVATE_REWARD_URLS": "1",
            "RLFT_MODEL_ROOTS": str(root / "models"),
            # The workers have no GPU: they offer two CPU ranks (the 2-rank job of test_stack.py).
            "RLFT_WORKER_CPU_RANKS": "2",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    s = Stack(root=root, env=env, api_url=env["RLFT_API_URL"], model_path=str(model))
    try:
        _start_reward_servers(s)
        _start_api(s, db_url)
        s.start_worker("worker-1")
        s.start_worker("worker-2")
        yield s
    finally:
        if s.http is not None:
            s.http.close()
        s.teardown()
        for gen in (broker_gen, db_gen):
            gen.close()


def _start_reward_servers(s: Stack) -> None:
    # "slow" answers after 200 ms: a floor under the step time of the jobs a test must catch while running.
    apps = {
        "letter": ("examples.rewards.letter:app", {}),
        "slow": ("examples.rewards.letter:app", {"RLFT_REWARD_DELAY_MS": "200"}),
        "openrlhf": ("examples.rewards.openrlhf_letter:app", {}),
        "failing": ("tests.e2e.failing_reward:app", {}),
    }
    for name, (target, extra_env) in apps.items():
        port = free_port()
        cmd = [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port)]
        s.spawn(f"reward-{name}", [*cmd, "--log-level", "warning"], extra_env)
        s.reward_urls[name] = f"http://127.0.0.1:{port}/"
    for name, url in s.reward_urls.items():
        wait_for(lambda url=url: _answers(url), 60, f"reward server {name}", s)


def _start_api(s: Stack, db_url: str | None) -> None:
    from rlft_contracts.settings import Settings
    from service.db import migrate
    from service.keys import create_api_key

    api_env = {"RLFT_DATA_DIR": str(s.root / "api"), "RLFT_REAPER_INTERVAL_S": "0.5"}
    if db_url:
        api_env["RLFT_DATABASE_URL"] = db_url
    settings = Settings(
        data_dir=s.root / "api",
        database_url=db_url or "",
        dev_mode=True,
        worker_secret=s.env["RLFT_WORKER_SECRET"],
        encryption_key=s.env["RLFT_ENCRYPTION_KEY"],
    )
    migrate(settings)
    port = s.api_url.rsplit(":", 1)[1]
    s.spawn(
        "api",
        uvicorn_command("service.app:create_app", port, factory=True),
        api_env,
    )
    wait_for(lambda: _answers(f"{s.api_url}/healthz", ok_only=True), 90, "the API's /healthz", s)
    key = create_api_key(settings, "e2e-tenant")
    s.http = httpx.Client(base_url=s.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _answers(url: str, ok_only: bool = False) -> bool:
    try:
        resp = httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return False
    return resp.status_code == 200 if ok_only else True
