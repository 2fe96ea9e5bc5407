"""API figures: job-create latency (p50, p95) and metric points ingested per second.

Starts the real service (``uvicorn --factory service.app:create_app``) on a free port of 127.0.0.1 with a
throw-away SQLite database (or ``--database-url``), creates an API key through ``service.keys``, then:
1. ``POST /v1/jobs`` ``--jobs`` times, one after the other (what a user or CI does);
2. claims one job as a worker and posts ``--batches`` metric batches of ``--points`` points each to
   ``/internal/v1/jobs/{id}/metrics`` (what the worker's relay does), and counts points per second;
3. times ``--sse-points`` metric points from the worker's POST to the SSE subscriber's read.
With a Postgres ``--database-url`` it works in a fresh schema and drops it afterwards.
Prints one JSON object; ``benchmarks/run.py`` calls ``measure()``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from rlft.localproc import free_port, uvicorn_command

ROOT = Path(__file__).resolve().parent.parent


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

    from rlft.settings import Settings

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


def measure(
    jobs: int = 100,
    batches: int = 50,
    points: int = 200,
    database_url: str | None = None,
    sse_points: int = 20,
) -> dict:
    from cryptography.fernet import Fernet

    from rlft.settings import Settings
    from service.db import migrate
    from service.keys import create_api_key

    with tempfile.TemporaryDirectory(prefix="rlft-api-bench-") as tmp, _database(database_url, tmp) as db_url:
        env = {
            **os.environ,
            "RLFT_DATA_DIR": tmp,
            "RLFT_DEV_MODE": "1",
            "RLFT_DATABASE_URL": db_url,
            "RLFT_WORKER_SECRET": "bench-" + secrets.token_hex(16),
            "RLFT_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            "RLFT_RUN_BACKGROUND_TASKS": "0",
            "RLFT_ALLOW_PRIVATE_REWARD_URLS": "1",
        }
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=100)
    p.add_argument("--batches", type=int, default=50)
    p.add_argument("--points", type=int, default=200)
    p.add_argument("--sse-points", type=int, default=20)
    p.add_argument(
        "--database-url", default=None, help="default: a temporary SQLite file; postgres: a temp schema"
    )
    a = p.parse_args()
    print(json.dumps(measure(a.jobs, a.batches, a.points, a.database_url, a.sse_points), indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
