"""API figures: job-create latency (p50, p95) and metric points ingested per second.

Starts the real service (``uvicorn --factory service.app:create_app``) on a free port of 127.0.0.1 with a
throw-away SQLite database (or ``--database-url``), creates an API key through ``service.keys``, then:
1. ``POST /v1/jobs`` ``--jobs`` times, one after the other (what a user or CI does);
2. claims one job as a worker and posts ``--batches`` metric batches of ``--points`` points each to
   ``/internal/v1/jobs/{id}/metrics`` (what the worker's relay does), and counts points per second;
3. times ``--sse-points`` metric points from the worker's POST to the SSE subscriber's read.
With a Postgres ``--database-url`` it works in a fresh schema and drops it afterwards.
Prints one JSON object; ``benchmarks/run.py`` calls ``measure()``.

``--burst`` is the admission load test instead: ``--clients`` concurrent clients (default 1,000) for
``--duration`` seconds (default 60) mixing job creates, gets, lists and reward dry runs against a slow local
reward server (it sleeps ``--reward-sleep`` seconds), spread over ``--tenants`` tenants, while one running
job's worker heartbeats every 2 s on a 15 s lease with the reaper running. Clients honour ``Retry-After``.
It reports answers by status code, 500s and requests over 10 s (both must be 0), p50/p99 latency, jobs
stored against 201s received (equal: every created job answered exactly once), and whether the running job
kept its lease. Everything stays on 127.0.0.1 and ends when the duration is up.

``--load`` is the fleet test (Postgres, ``rlft serve --workers 2``, clients in separate
processes): see benchmarks/load_bench.py.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import secrets
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from rlft_contracts.localproc import free_port, uvicorn_command

ROOT = Path(__file__).resolve().parent.parent
SLOW_S = 10.0  # a request slower than this is a failure of the burst test
HEARTBEAT_EVERY_S = 2.0
BURST_LEASE_S = 15
# The mix of a client's calls: weights of create, get, list, dry run.
MIX = {"create": 30, "get": 30, "list": 25, "dry_run": 15}


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the API at {url} was not ready within {timeout:.0f} s")


def _job_body(i: int) -> dict:
    return {
        "algorithm": "grpo",
        "model": {"name_or_path": "tiny-qwen"},
        "dataset": {"rows": [{"prompt": "2+2=", "label": "4"}]},
        "reward": {"url": "http://127.0.0.1:9/score"},
        "hyperparameters": {"steps": 5, "prompts_per_step": 1, "group_size": 2},
        "resources": {"gpus": 0},
        "metadata": {"bench": str(i)},
    }


@contextlib.contextmanager
def _database(url: str | None, tmp: str) -> Iterator[str]:
    """The URL to use: a SQLite file in ``tmp``, or a throw-away schema of the given Postgres database."""
    if not url or not url.startswith("postgres"):
        yield url or f"sqlite:///{tmp}/rlft.db"
        return
    import sqlalchemy as sa

    from rlft_contracts.settings import Settings

    base = Settings(database_url=url, dev_mode=True).database_url
    schema = "bench_" + secrets.token_hex(4)
    admin = sa.create_engine(base, poolclass=sa.NullPool)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


def _api_env(data_dir: str, database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a throw-away API: dev mode, fresh secrets, private reward URLs allowed."""
    from cryptography.fernet import Fernet

    return {
        **os.environ,
        "RLFT_DATA_DIR": data_dir,
        "RLFT_DEV_MODE": "1",
        "RLFT_DATABASE_URL": database_url,
        "RLFT_WORKER_SECRET": "bench-" + secrets.token_hex(16),
        "RLFT_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "RLFT_ALLOW_PRIVATE_REWARD_URLS": "1",
        **extra,
    }


def measure(
    jobs: int = 100,
    batches: int = 50,
    points: int = 200,
    database_url: str | None = None,
    sse_points: int = 20,
) -> dict:
    from rlft_contracts.settings import Settings
    from service.db import migrate
    from service.keys import create_api_key

    with tempfile.TemporaryDirectory(prefix="rlft-api-bench-") as tmp, _database(database_url, tmp) as db_url:
        # Every created job stays queued: the per-tenant active-job limit must not end the run.
        env = _api_env(tmp, db_url, RLFT_RUN_BACKGROUND_TASKS="0", RLFT_MAX_ACTIVE_JOBS_PER_TENANT="1000000")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen(
            uvicorn_command("service.app:create_app", port, factory=True),
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            _wait_ready(url, proc)
            settings = Settings(data_dir=tmp, database_url=db_url, dev_mode=True)
            migrate(settings)  # the app migrates SQLite by itself; Postgres needs it here
            key = create_api_key(settings, "bench")
            with httpx.Client(base_url=url, timeout=30) as client:
                result = _run(client, key, env["RLFT_WORKER_SECRET"], jobs, batches, points)
            if sse_points:
                result.update(_sse_lag(url, key, env["RLFT_WORKER_SECRET"], sse_points))
            result["database"] = "postgres" if db_url.startswith("postgres") else "sqlite"
            return result
        finally:
            proc.terminate()
            proc.wait(10)


def _run(client: httpx.Client, key: str, worker_secret: str, jobs: int, batches: int, points: int) -> dict:
    user = {"Authorization": f"Bearer {key}"}
    latencies, job_ids = [], []
    for i in range(jobs):
        t0 = time.perf_counter()
        r = client.post("/v1/jobs", json=_job_body(i), headers=user)
        latencies.append(time.perf_counter() - t0)
        if r.status_code != 201:
            raise RuntimeError(f"POST /v1/jobs answered {r.status_code}: {r.text[:500]}")
        job_ids.append(r.json()["id"])
    worker = {"Authorization": f"Bearer {worker_secret}"}
    r = client.post(f"/internal/v1/jobs/{job_ids[0]}/claim", json={"worker_id": "bench"}, headers=worker)
    r.raise_for_status()
    fence = r.json()["fence"]
    names = [f"metric/{j}" for j in range(points // 10 or 1)]
    t0 = time.perf_counter()
    for b in range(batches):
        body = {
            "fence": fence,
            "points": [
                {"step": b * 10 + j // len(names), "name": names[j % len(names)], "value": float(j)}
                for j in range(points)
            ],
        }
        client.post(f"/internal/v1/jobs/{job_ids[0]}/metrics", json=body, headers=worker).raise_for_status()
    elapsed = time.perf_counter() - t0
    latencies.sort()
    return {
        "job_create_p50_ms": statistics.median(latencies) * 1000,
        "job_create_p95_ms": latencies[int(0.95 * (len(latencies) - 1))] * 1000,
        "jobs": jobs,
        "metric_points_per_s": batches * points / elapsed,
        "metric_batch_points": points,
        "metric_batches": batches,
    }


def _sse_lag(url: str, key: str, worker_secret: str, n: int) -> dict:
    """Milliseconds from a worker's metric POST to the subscriber reading its event on the SSE stream."""
    user, worker = {"Authorization": f"Bearer {key}"}, {"Authorization": f"Bearer {worker_secret}"}
    with httpx.Client(base_url=url, timeout=30) as c:
        jid = c.post("/v1/jobs", json=_job_body(0), headers=user).json()["id"]
        fence = c.post(f"/internal/v1/jobs/{jid}/claim", json={"worker_id": "bench"}, headers=worker).json()[
            "fence"
        ]
    sent: dict[int, float] = {}
    lags: list[float] = []

    def produce() -> None:
        with httpx.Client(base_url=url, headers=worker, timeout=30) as p:
            time.sleep(0.5)
            for step in range(1, n + 1):
                sent[step] = time.perf_counter()
                body = {"fence": fence, "points": [{"step": step, "name": "reward/mean", "value": 0.5}]}
                p.post(f"/internal/v1/jobs/{jid}/metrics", json=body).raise_for_status()
                time.sleep(0.25)  # points land at random phases of the stream's 0.2 s database poll
            p.post(f"/internal/v1/jobs/{jid}/finish", json={"fence": fence, "status": "succeeded"})

    threading.Thread(target=produce, daemon=True).start()
    with httpx.stream("GET", f"{url}/v1/jobs/{jid}/events/stream", headers=user, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                event = json.loads(line[5:])
                if event["type"] == "metrics":
                    lags.append((time.perf_counter() - sent[event["data"]["step"]]) * 1000)
    return {"sse_lag_p50_ms": statistics.median(lags), "sse_lag_max_ms": max(lags), "sse_points": len(lags)}


def slow_reward_app() -> Any:
    """The slow reward endpoint of ``--burst`` (``uvicorn --factory``): sleeps, then scores every item 1.0."""
    from fastapi import FastAPI, Request

    sleep_s = float(os.environ.get("RLFT_BENCH_REWARD_SLEEP_S", "5"))
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.post("/score")
    async def score(request: Request) -> dict:
        items = (await request.json())["items"]
        await asyncio.sleep(sleep_s)
        return {"items": [{"id": it["id"], "reward": 1.0} for it in items]}

    return app


@contextlib.contextmanager
def _process(argv: list[str], env: dict[str, str], url: str, log: Path) -> Iterator[subprocess.Popen]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_ready(url, proc)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def burst(
    clients: int = 1000,
    duration_s: float = 60.0,
    database_url: str | None = None,
    broker_url: str | None = None,
    tenants: int = 20,
    reward_sleep_s: float = 5.0,
) -> dict:
    """The issue-9 load test; see the module docstring. Returns the figures as one dict."""
    from rlft_contracts.settings import Settings
    from service.db import migrate
    from service.keys import create_api_key

    with tempfile.TemporaryDirectory(prefix="rlft-burst-") as tmp, _database(database_url, tmp) as db_url:
        env = _api_env(
            tmp,
            db_url,
            RLFT_LEASE_SECONDS=str(BURST_LEASE_S),
            RLFT_REAPER_INTERVAL_S="1",
            RLFT_BENCH_REWARD_SLEEP_S=str(reward_sleep_s),
        )
        if broker_url:
            env["RLFT_BROKER_URL"] = broker_url
        settings = Settings(data_dir=tmp, database_url=db_url, dev_mode=True)
        migrate(settings)
        keys = [create_api_key(settings, f"bench-{i}") for i in range(tenants + 1)]
        api_port, reward_port = free_port(), free_port()
        api, reward = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{reward_port}"
        reward_cmd = uvicorn_command("benchmarks.api_bench:slow_reward_app", reward_port, factory=True)
        api_cmd = uvicorn_command("service.app:create_app", api_port, factory=True)
        with (
            _process(reward_cmd, env, reward, Path(tmp) / "reward.log"),
            _process(api_cmd, env, api, Path(tmp) / "api.log") as api_proc,
        ):
            worker = _Heartbeater(api, keys[-1], env["RLFT_WORKER_SECRET"])
            worker.start()
            calls = asyncio.run(_clients(api, keys[:-1], clients, duration_s, f"{reward}/score"))
            lease = worker.finish()
            server = _server_side(api, env["RLFT_WORKER_SECRET"])
            api_alive = api_proc.poll() is None
            api_log = (Path(tmp) / "api.log").read_text(errors="replace")
        stored = _stored_jobs(settings, keys[:-1])
    result = _summary(calls, stored, duration_s)
    result.update(lease)
    result.update(server)
    result.update(
        clients=clients,
        duration_s=duration_s,
        tenants=tenants,
        reward_sleep_s=reward_sleep_s,
        database="postgres" if db_url.startswith("postgres") else "sqlite",
        broker="redis" if (broker_url or "").startswith("redis") else "embedded (SQLite)",
        api_alive_at_end=api_alive,
        api_tracebacks=api_log.count("Traceback"),
    )
    return result


async def _clients(url: str, keys: list[str], n: int, duration_s: float, reward_url: str) -> list[tuple]:
    """``n`` clients calling until the deadline; one (op, status or error name, seconds, tenant) per call."""
    calls: list[tuple] = []
    # A connection of its own per client, as separate users have (one pool of 1,000 connections is the
    # bench's own bottleneck); one TLS context for all (each client would otherwise load the CA bundle).
    tls = ssl.create_default_context()
    https = [httpx.AsyncClient(base_url=url, timeout=30, verify=tls) for _ in range(n)]
    deadline = time.monotonic() + duration_s
    try:
        await asyncio.gather(
            *(_client(h, keys[i % len(keys)], deadline, reward_url, calls) for i, h in enumerate(https))
        )
    finally:
        await asyncio.gather(*(h.aclose() for h in https))
    return calls


async def _client(http: httpx.AsyncClient, key: str, deadline: float, reward_url: str, calls: list) -> None:
    user = {"Authorization": f"Bearer {key}"}
    rng = random.Random()
    mine: list[str] = []
    ops, weights = list(MIX), list(MIX.values())
    await asyncio.sleep(rng.random())  # clients arrive over the first second, not in one instant
    while time.monotonic() < deadline:
        op = rng.choices(ops, weights)[0]
        if op == "get" and not mine:
            op = "list"
        t0 = time.perf_counter()
        try:
            r = await _call(http, op, user, mine, rng, reward_url)
            outcome: int | str = r.status_code
        except httpx.HTTPError as e:
            r, outcome = None, type(e).__name__
        elapsed = time.perf_counter() - t0
        calls.append((op, outcome, elapsed, key))
        if r is not None and op == "create" and r.status_code == 201:
            mine.append(r.json()["id"])
        wait = float(r.headers.get("Retry-After", 0)) if r is not None and r.status_code in (429, 503) else 0
        await asyncio.sleep(min(wait, max(0.0, deadline - time.monotonic())) + rng.random() * 0.1)


async def _call(
    http: httpx.AsyncClient, op: str, user: dict, mine: list[str], rng: random.Random, reward_url: str
) -> httpx.Response:
    if op == "create":
        headers = {**user, "Idempotency-Key": secrets.token_hex(8)}  # one logical create each
        return await http.post("/v1/jobs", json=_job_body(rng.randrange(10**6)), headers=headers)
    if op == "get":
        return await http.get(f"/v1/jobs/{rng.choice(mine)}", headers=user)
    if op == "list":
        return await http.get("/v1/jobs", params={"limit": 20}, headers=user)
    body = {"reward": {"url": reward_url}, "items": [{"prompt": "2+2=", "completion": "4", "label": "4"}]}
    return await http.post("/v1/rewards/validate", json=body, headers=user)


class _Heartbeater(threading.Thread):
    """A running job's worker: claims it, heartbeats every 2 s until the clients are done, then finishes."""

    def __init__(self, url: str, key: str, worker_secret: str):
        super().__init__(daemon=True)
        self.url = url
        self.worker = {"Authorization": f"Bearer {worker_secret}"}
        with httpx.Client(base_url=url, timeout=30) as c:
            job = c.post("/v1/jobs", json=_job_body(0), headers={"Authorization": f"Bearer {key}"})
            job.raise_for_status()
            self.job_id = job.json()["id"]
            claim = c.post(
                f"/internal/v1/jobs/{self.job_id}/claim", json={"worker_id": "bench"}, headers=self.worker
            )
            claim.raise_for_status()
            self.fence = claim.json()["fence"]
        self.beats: list[tuple[int | str, float, str | None]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, headers=self.worker, timeout=30) as c:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                try:
                    r = c.post(f"/internal/v1/jobs/{self.job_id}/heartbeat", json={"fence": self.fence})
                    code = r.json().get("detail", {}).get("code") if r.status_code >= 400 else None
                    self.beats.append((r.status_code, time.perf_counter() - t0, code))
                except httpx.HTTPError as e:
                    self.beats.append((type(e).__name__, time.perf_counter() - t0, None))
                self.stop.wait(HEARTBEAT_EVERY_S)

    def finish(self) -> dict:
        self.stop.set()
        self.join(60)
        with httpx.Client(base_url=self.url, headers=self.worker, timeout=30) as c:
            r = c.post(
                f"/internal/v1/jobs/{self.job_id}/finish", json={"fence": self.fence, "status": "succeeded"}
            )
        lost = [b for b in self.beats if b[2] in ("stale_fence", "not_leased")]
        ok = sum(1 for b in self.beats if b[0] == 200)
        return {
            "heartbeats": len(self.beats),
            "heartbeats_ok": ok,
            "heartbeat_max_s": round(max((b[1] for b in self.beats), default=0.0), 3),
            "heartbeats_by_status": dict(collections.Counter(str(b[0]) for b in self.beats)),
            "lease_kept": not lost and r.status_code == 200,
            "finish_status": r.status_code,
        }


def _server_side(url: str, worker_secret: str) -> dict:
    """The API's own view (its latency histogram on /metrics): time inside the server, without the clients'.

    The clients share the machine's two cores with the API; their own event loop's delay is in the
    client-side figures, not in these.
    """
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {worker_secret}"}, timeout=30).text
    buckets: dict[float, float] = collections.defaultdict(float)
    for line in text.splitlines():
        if line.startswith("rlft_http_request_duration_seconds_bucket") and 'route="/metrics"' not in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float(le)] += float(line.rsplit(" ", 1)[1])
    total = buckets.get(float("inf"), 0.0)

    def upper(q: float) -> float:
        return next((le for le in sorted(buckets) if buckets[le] >= q * total), float("inf"))

    return {
        "server_requests": int(total),
        "server_over_10s": int(total - buckets.get(10.0, 0.0)),
        "server_p50_at_most_s": upper(0.5),
        "server_p99_at_most_s": upper(0.99),
    }


def _stored_jobs(settings: Any, keys: list[str]) -> int:
    import sqlalchemy as sa

    from service.keys import hash_key

    engine = sa.create_engine(settings.database_url, poolclass=sa.NullPool)
    query = sa.text(
        "SELECT count(*) FROM jobs WHERE tenant_id IN "
        "(SELECT tenant_id FROM api_keys WHERE key_hash IN :hashes)"
    ).bindparams(sa.bindparam("hashes", expanding=True))
    try:
        with engine.connect() as conn:
            return conn.scalar(query, {"hashes": [hash_key(k) for k in keys]})
    finally:
        engine.dispose()


def _summary(calls: list[tuple], stored: int, duration_s: float) -> dict:
    latencies = sorted(c[2] for c in calls)
    by_op: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for op, outcome, _, _ in calls:
        by_op[op][str(outcome)] += 1

    def pct(values: list[float], q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1) if values else 0.0

    per_op = {op: sorted(c[2] for c in calls if c[0] == op) for op in MIX}

    created = by_op["create"]["201"]
    return {
        "requests": len(calls),
        "requests_per_s": round(len(calls) / duration_s, 1),
        "by_status": dict(collections.Counter(str(c[1]) for c in calls)),
        "by_op": {op: dict(counts) for op, counts in by_op.items()},
        "errors_500": sum(1 for c in calls if c[1] == 500),
        "over_10s": sum(1 for c in calls if c[2] > SLOW_S),
        "latency_p50_ms": pct(latencies, 0.50),
        "latency_p99_ms": pct(latencies, 0.99),
        "latency_by_op_p50_p99_ms": {op: [pct(v, 0.5), pct(v, 0.99)] for op, v in per_op.items()},
        "latency_max_ms": round(latencies[-1] * 1000, 1) if latencies else 0.0,
        "creates_201": created,
        "jobs_stored": stored,
        "every_created_job_answered_once": created == stored,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=100)
    p.add_argument("--batches", type=int, default=50)
    p.add_argument("--points", type=int, default=200)
    p.add_argument("--sse-points", type=int, default=20)
    p.add_argument(
        "--database-url", default=None, help="default: a temporary SQLite file; postgres: a temp schema"
    )
    p.add_argument("--burst", action="store_true", help="the admission load test instead (module docstring)")
    p.add_argument("--clients", type=int, default=1000, help="--burst: concurrent clients")
    p.add_argument("--duration", type=float, default=60.0, help="--burst, --load: seconds of traffic")
    p.add_argument("--tenants", type=int, default=20, help="--burst: tenants the clients are spread over")
    p.add_argument("--reward-sleep", type=float, default=5.0, help="--burst: seconds the reward server takes")
    p.add_argument("--broker-url", default=None, help="--burst: default the embedded (SQLite) broker")
    p.add_argument("--load", action="store_true", help="the fleet test (benchmarks/load_bench.py)")
    p.add_argument(
        "--workers", type=int, default=20, help="--load: simulated training workers (one job each)"
    )
    p.add_argument("--subscribers", type=int, default=500, help="--load: SSE streams over the workers' jobs")
    p.add_argument(
        "--subscriber-processes", type=int, default=5, help="--load: processes holding the streams"
    )
    p.add_argument("--pollers", type=int, default=10, help="--load: clients listing jobs every 0.5 s")
    p.add_argument("--names", type=int, default=30, help="--load: metric names a worker posts each step")
    p.add_argument("--samples", type=int, default=16, help="--load: samples a worker posts each step")
    p.add_argument("--every", type=float, default=0.5, help="--load: seconds between a worker's steps")
    p.add_argument("--ingest-posters", type=int, default=8, help="--load: concurrent 1,000-point posters")
    p.add_argument("--ingest-s", type=float, default=15.0, help="--load: seconds of the ingestion phase")
    p.add_argument("--reads", type=int, default=20, help="--load: reads of the 100k-point job, each kind")
    p.add_argument("--api-processes", type=int, default=2, help="--load: rlft serve --workers")
    a = p.parse_args()
    if a.load:
        from benchmarks.load_bench import load

        opts = {
            k: getattr(a, k) for k in ("workers", "subscribers", "subscriber_processes", "pollers", "names")
        }
        opts.update(samples=a.samples, every=a.every, ingest_posters=a.ingest_posters, ingest_s=a.ingest_s)
        opts.update(reads=a.reads, api_processes=a.api_processes, duration=a.duration, creates=a.jobs)
        result = load(a.database_url, opts)
    elif a.burst:
        result = burst(a.clients, a.duration, a.database_url, a.broker_url, a.tenants, a.reward_sleep)
    else:
        result = measure(a.jobs, a.batches, a.points, a.database_url, a.sse_points)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
