"""Measure the API as deployed: a real uvicorn process, real HTTP, the chosen database.

    python -m service.bench                                  # SQLite under a temp data dir
    python -m service.bench --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test

Prints p50/p95 of ``POST /v1/jobs``, metric points ingested per second through ``/internal/v1`` (batches of
``--batch`` points, as the worker's relay sends them) and the SSE delivery lag (metric POSTed → event read).
On Postgres it works in a fresh schema and drops it afterwards.
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
from cryptography.fernet import Fernet

from rlft.settings import Settings
from service.db import migrate
from service.keys import create_api_key

SPEC = {
    "model": {"name_or_path": "tiny-qwen"},
    "dataset": {"rows": [{"prompt": "2+2=", "label": "4"}] * 8},
    "reward": {"url": "http://127.0.0.1:9/score", "headers": {"Authorization": "Bearer bench"}},
    "hyperparameters": {"steps": 100, "prompts_per_step": 2, "group_size": 2},
    "resources": {"gpus": 0},
}


def main() -> None:
    args = _parse_args()
    with tempfile.TemporaryDirectory() as tmp, _database(args.database_url, Path(tmp)) as url:
        settings = Settings(
            data_dir=Path(tmp) / "data",
            database_url=url,
            dev_mode=True,
            worker_secret=secrets.token_urlsafe(16),
            encryption_key=Fernet.generate_key().decode(),
            allow_private_reward_urls=True,
        )
        migrate(settings)
        key = create_api_key(settings, "bench")
        with _server(settings) as base:
            tenant = {"Authorization": f"Bearer {key}"}
            worker = {"Authorization": f"Bearer {settings.resolved_worker_secret()}"}
            db = "postgres" if "postgresql" in url else "sqlite"
            print(f"database: {db}; one uvicorn process; {os.cpu_count()} CPUs")
            _bench_create(base, tenant, args.jobs)
            _bench_ingest(base, tenant, worker, args.batches, args.batch)
            _bench_sse(base, tenant, worker, args.sse_points)


def _parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--database-url", default=None, help="default: a SQLite file in a temp dir")
    p.add_argument("--jobs", type=int, default=200, help="POST /v1/jobs requests")
    p.add_argument("--batches", type=int, default=40, help="metric batches")
    p.add_argument("--batch", type=int, default=500, help="points per batch")
    p.add_argument("--sse-points", type=int, default=20, help="points timed through SSE")
    return p.parse_args()


@contextlib.contextmanager
def _database(url: str | None, tmp: Path) -> Iterator[str]:
    if not url:
        yield f"sqlite:///{tmp / 'rlft.db'}"
        return
    import sqlalchemy as sa

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


@contextlib.contextmanager
def _server(settings: Settings) -> Iterator[str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "RLFT_DATA_DIR": str(settings.data_dir),
        "RLFT_DATABASE_URL": settings.database_url,
        "RLFT_WORKER_SECRET": settings.resolved_worker_secret(),
        "RLFT_ENCRYPTION_KEY": settings.resolved_encryption_key(),
        "RLFT_DEV_MODE": "1",
        "RLFT_ALLOW_PRIVATE_REWARD_URLS": "1",
    }
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app", "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--log-level", "warning", "--no-access-log"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(base)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


def _wait(base: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base}/healthz").status_code == 200:
                return
        time.sleep(0.1)
    raise SystemExit(f"the API at {base} did not start")


def _pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def _bench_create(base: str, tenant: dict, n: int) -> None:
    times = []
    with httpx.Client(base_url=base, headers=tenant) as c:
        for _ in range(n):
            start = time.perf_counter()
            c.post("/v1/jobs", json=SPEC).raise_for_status()
            times.append((time.perf_counter() - start) * 1000)
    print(
        f"POST /v1/jobs: p50 {statistics.median(times):.1f} ms, p95 {_pct(times, 0.95):.1f} ms "
        f"({n} sequential requests, enqueue included)"
    )


def _running_job(c: httpx.Client, tenant: dict, worker: dict) -> tuple[str, int]:
    jid = c.post("/v1/jobs", json=SPEC, headers=tenant).json()["id"]
    fence = c.post(f"/internal/v1/jobs/{jid}/claim", json={"worker_id": "bench"}, headers=worker).json()[
        "fence"
    ]
    return jid, fence


def _bench_ingest(base: str, tenant: dict, worker: dict, batches: int, size: int) -> None:
    names = [f"metric/{i}" for i in range(20)]
    with httpx.Client(base_url=base) as c:
        jid, fence = _running_job(c, tenant, worker)
        points = [
            {"step": i // len(names), "name": names[i % len(names)], "value": float(i)}
            for i in range(batches * size)
        ]
        start = time.perf_counter()
        for b in range(batches):
            body = {"fence": fence, "points": points[b * size : (b + 1) * size]}
            c.post(f"/internal/v1/jobs/{jid}/metrics", json=body, headers=worker).raise_for_status()
        elapsed = time.perf_counter() - start
    print(f"metric ingestion: {batches * size / elapsed:,.0f} points/s ({batches} batches of {size})")


def _bench_sse(base: str, tenant: dict, worker: dict, n: int) -> None:
    with httpx.Client(base_url=base) as c:
        jid, fence = _running_job(c, tenant, worker)
    sent: dict[int, float] = {}
    lags: list[float] = []

    def produce() -> None:
        with httpx.Client(base_url=base, headers=worker) as p:
            time.sleep(0.5)
            for step in range(1, n + 1):
                sent[step] = time.perf_counter()
                body = {"fence": fence, "points": [{"step": step, "name": "reward/mean", "value": 0.5}]}
                p.post(f"/internal/v1/jobs/{jid}/metrics", json=body).raise_for_status()
                time.sleep(0.25)  # points land at random phases of the 0.2 s poll
            p.post(f"/internal/v1/jobs/{jid}/finish", json={"fence": fence, "status": "succeeded"})

    threading.Thread(target=produce, daemon=True).start()
    with httpx.stream("GET", f"{base}/v1/jobs/{jid}/events/stream", headers=tenant, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                event = json.loads(line[5:])
                if event["type"] == "metrics":
                    lags.append((time.perf_counter() - sent[event["data"]["step"]]) * 1000)
    print(
        f"SSE delivery lag: p50 {statistics.median(lags):.0f} ms, max {max(lags):.0f} ms "
        f"({len(lags)} points, 0.2 s database poll)"
    )


if __name__ == "__main__":
    main()
