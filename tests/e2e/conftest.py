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
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from rlcore.testing import make_tiny_model
from rlft.localstack import Child, LocalStack
from rlft_contracts.localproc import free_port
from tests.support.databases import redis_database, throwaway_database
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
LEASE_SECONDS = 5
E2E_REDIS_DBS = (14, 15, 12, 11, 10, 9)
E2E_REDIS_LOCK = "rlft:e2e:session"
TERMINAL = {"succeeded", "failed", "cancelled", "paused"}


@dataclass
class Stack:
    root: Path
    env: dict[str, str]
    api_url: str
    model_path: str
    local: LocalStack
    reward_urls: dict[str, str] = field(default_factory=dict)
    workers: list[Child] = field(default_factory=list)
    http: httpx.Client | None = None

    # -- processes ---------------------------------------------------------------------------------------

    @property
    def procs(self) -> list[Child]:
        return self.local.children

    def start_worker(self, name: str) -> Child:
        # A data directory of its own, as if on its own machine.
        env = {"RLFT_DATA_DIR": str(self.root / name)}
        proc = self.local.start_worker(name=name, hostname=f"{name}@%h", extra_env=env)
        wait_for(lambda: "ready." in proc.tail(100_000), 120, f"worker {name} ready", self)
        self.workers.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(
            f"----- {p.name} (pid {p.pid}, alive={p.alive()}) -----\n{p.tail()}" for p in self.procs
        )

    def teardown(self) -> None:
        pids = [p.pid for p in self.procs]
        self.local.stop()
        # Training children lead their own sessions; they die with their worker, but make sure.
        for pid in training_children(pids):
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
    """:func:`wait_until`, failing with what was last seen and the tail of every process's log."""

    def detail() -> str:
        seen = f"last seen: {context()}\n" if context else ""
        return seen + (stack.logs() if stack else "")

    wait_until(check, what, timeout_s, every_s=every_s, detail=detail)


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


@contextmanager
def _backends(root: Path) -> Iterator[tuple[str | None, str]]:
    """(database URL, broker URL): Postgres and Redis of the session's own when configured, else embedded."""
    db_url, redis_url = os.environ.get("RLFT_TEST_DATABASE_URL"), os.environ.get("RLFT_TEST_REDIS_URL")
    with ExitStack() as own:
        database = own.enter_context(throwaway_database(db_url, "rlft_e2e")) if db_url else None
        if redis_url:
            broker = own.enter_context(redis_database(redis_url, E2E_REDIS_DBS, E2E_REDIS_LOCK))
        else:
            broker = f"sqla+sqlite:///{root / 'broker.db'}"
        yield database, broker


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("e2e")
    model = make_tiny_model(root / "models" / "tiny", "tiny")  # under the stack's model root
    with _backends(root) as (db_url, broker_url):
        env = _stack_env(root, broker_url)
        local = LocalStack(env=env, log_dir=root / "logs", cwd=REPO)
        s = Stack(root=root, env=env, api_url=env["RLFT_API_URL"], model_path=str(model), local=local)
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


def _stack_env(root: Path, broker_url: str) -> dict[str, str]:
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
    return env


def _start_reward_servers(s: Stack) -> None:
    # "slow" answers after 200 ms: a floor under the step time of the jobs a test must catch while running.
    apps = {
        "letter": ("examples.rewards.letter:app", {}),
        "slow": ("examples.rewards.letter:app", {"RLFT_REWARD_DELAY_MS": "200"}),
        "openrlhf": ("examples.rewards.openrlhf_letter:app", {}),
        "failing": ("tests.e2e.failing_reward:app", {}),
    }
    for name, (target, extra_env) in apps.items():
        url = s.local.start_reward_server(
            target, "127.0.0.1", free_port(), name=f"reward-{name}", extra_env=extra_env, timeout=60
        )
        s.reward_urls[name] = f"{url}/"


def _start_api(s: Stack, db_url: str | None) -> None:
    from rlft_contracts.settings import Settings
    from service import admin

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
    admin.migrate(settings)
    s.local.start_api("127.0.0.1", int(s.api_url.rsplit(":", 1)[1]), api_env)
    key = admin.create_key(settings, "e2e-tenant")
    s.http = httpx.Client(base_url=s.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
