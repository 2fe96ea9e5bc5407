"""``api_bench.py --load``: the API at fleet scale, on Postgres behind ``rlft serve --workers 2``.

Clients are separate processes (multiprocessing, spawn), all on 127.0.0.1:
1. job creates, one after the other: p50 and p95;
2. ingestion: ``--ingest-posters`` concurrent posters (in two processes), each posting 1,000-point metric
   batches to its own job for ``--ingest-s`` seconds: metric points stored per second;
3. reads of a job holding 100,000 points: the default first page (10,000 points), a chart
   (``max_points=1000``) and one name's chart, ``--reads`` times each: p50;
4. the fleet: ``--subscribers`` SSE streams spread over ``--workers`` jobs (several processes) connect; the
   database's scans per second on the benchmark's tables are counted over 10 s with no stream open and again
   with all of them open and idle; then for ``--duration`` seconds each simulated worker posts a step's
   metrics (``--names`` names) and samples (``--samples``) every ``--every`` seconds while ``--pollers``
   clients list jobs every 0.5 s. Delivery lag is the time from just before a worker's metrics POST to a
   subscriber reading that step's event (all on one clock); every subscriber must receive every step.
Errors are transport errors, 5xx other than a 503 (503s are retried after Retry-After and counted apart),
unexpected 4xx, streams that fail, and deliveries missing at the end: all must be 0.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

HANG_S = 120.0
READY_TIMEOUT_S = 300.0


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def _ms(values: list[float]) -> dict[str, float | None]:
    return {
        "p50_ms": _round(_pct(values, 0.50)),
        "p95_ms": _round(_pct(values, 0.95)),
        "max_ms": _round(max(values) if values else None),
    }


def _round(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 1)


class Tally:
    """Answers by outcome; 503s are retried by the caller."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.retried_503 = 0

    async def call(self, send, ok: tuple[int, ...] = (200, 201)) -> httpx.Response | None:
        for _ in range(50):
            try:
                r = await send()
            except httpx.HTTPError as exc:
                self.errors.append(type(exc).__name__)
                return None
            if r.status_code == 503:
                self.retried_503 += 1
                await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                continue
            if r.status_code not in ok:
                self.errors.append(f"{r.status_code} {r.text[:200]}")
                return None
            return r
        self.errors.append("503 fifty times")
        return None


# --- client processes (module-level functions: spawn imports them) ---------------------------------------


def _run_process(target: str, args: dict, out: Path) -> None:
    result = asyncio.run(globals()[target](**args))
    out.write_text(json.dumps(result))


def _spawn(target: str, args: dict, out: Path) -> multiprocessing.process.BaseProcess:
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_run_process, args=(target, args, out), daemon=True)
    proc.start()
    return proc


def _collect(procs: list[tuple[multiprocessing.process.BaseProcess, Path]], timeout: float) -> list[dict]:
    results = []
    for proc, out in procs:
        proc.join(timeout)
        if proc.exitcode != 0 or not out.exists():
            raise RuntimeError(f"a client process failed (exit code {proc.exitcode}); see its output above")
        results.append(json.loads(out.read_text()))
    return results


async def _ingest_client(url: str, secret: str, jobs: list[list], seconds: float, batch: int) -> dict:
    """Posters, one per job, each posting ``batch``-point metric batches back to back."""
    tally, accepted, names = Tally(), [0], [f"bench/m{i}" for i in range(100)]

    async def poster(c: httpx.AsyncClient, jid: str, fence: int, deadline: float) -> None:
        step = 0
        while time.monotonic() < deadline:
            points = [
                {"step": step + j // 100, "name": names[j % 100], "value": float(j)} for j in range(batch)
            ]
            step += batch // 100
            body = {"fence": fence, "points": points}
            r = await tally.call(lambda b=body: c.post(f"/internal/v1/jobs/{jid}/metrics", json=b))
            if r is not None:
                accepted[0] += r.json()["accepted"]

    headers = {"Authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=HANG_S) as c:
        t0 = time.monotonic()
        await asyncio.gather(*(poster(c, jid, fence, t0 + seconds) for jid, fence in jobs))
        elapsed = time.monotonic() - t0
    return {"accepted": accepted[0], "elapsed_s": elapsed, "errors": tally.errors, "503": tally.retried_503}


async def _subscriber_client(url: str, key: str, job_ids: list[str], ready: str, deadline: float) -> dict:
    """One SSE stream per entry of ``job_ids``; records when each metrics step arrives (time.time())."""
    tally = Tally()
    received: list[list] = []  # [stream index, job, step, time]
    connected = [0]

    async def stream(c: httpx.AsyncClient, i: int, jid: str) -> None:
        for attempt in range(50):
            try:
                async with c.stream("GET", f"/v1/jobs/{jid}/events/stream") as r:
                    if r.status_code == 503:
                        tally.retried_503 += 1
                        await asyncio.sleep(float(r.headers.get("Retry-After", "1")) * (1 + attempt % 3))
                        continue
                    if r.status_code != 200:
                        tally.errors.append(f"stream {r.status_code}")
                        return
                    seen = 0
                    async for line in r.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        event = json.loads(line[5:])
                        seen += 1
                        if seen == 2:  # queued and claimed: the catch-up read is done
                            connected[0] += 1
                            if connected[0] == len(job_ids):
                                Path(ready).write_text("ready")
                        if event["type"] == "metrics":
                            received.append([i, jid, event["data"]["step"], time.time()])
                    return
            except httpx.HTTPError as exc:
                tally.errors.append(f"stream {type(exc).__name__}")
                return
        tally.errors.append("stream: 503 fifty times")

    limits = httpx.Limits(max_connections=len(job_ids) + 10, max_keepalive_connections=0)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=HANG_S, limits=limits) as c:
        tasks = []
        for i, jid in enumerate(job_ids):
            tasks.append(asyncio.create_task(stream(c, i, jid)))
            await asyncio.sleep(0.01)  # connect gradually, as people arrive; a burst only measures 503s
        await asyncio.wait(tasks, timeout=max(1.0, deadline - time.time()))
    return {"received": received, "streams": len(job_ids), "errors": tally.errors, "503": tally.retried_503}


async def _worker_client(
    url: str,
    secret: str,
    jobs: list[list],
    start_at: float,
    seconds: float,
    every: float,
    names: int,
    samples: int,
) -> dict:
    """Simulated training workers: each posts a step's metrics, then its samples, every ``every`` s."""
    tally, sent, latencies = Tally(), [], []
    metric_names = [f"reward/c{i}" for i in range(names)]

    async def worker(c: httpx.AsyncClient, jid: str, fence: int) -> None:
        step = 0
        while (tick := start_at + step * every) < start_at + seconds:
            await asyncio.sleep(max(0.0, tick - time.time()))
            step += 1
            points = [{"step": step, "name": n, "value": step / 100} for n in metric_names]
            t0 = time.time()
            r = await tally.call(
                lambda: c.post(f"/internal/v1/jobs/{jid}/metrics", json={"fence": fence, "points": points})  # noqa: B023 - awaited here
            )
            t1 = time.time()
            latencies.append(t1 - t0)
            if r is not None:
                sent.append([jid, step, t0, t1])
            rows = [
                {"step": step, "index": i, "prompt": "p" * 64, "completion": "c" * 256, "reward": 0.5}
                for i in range(samples)
            ]
            await tally.call(
                lambda: c.post(f"/internal/v1/jobs/{jid}/samples", json={"fence": fence, "samples": rows})  # noqa: B023
            )

    headers = {"Authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=HANG_S) as c:
        await asyncio.gather(*(worker(c, jid, fence) for jid, fence in jobs))
    return {"sent": sent, "post_s": latencies, "errors": tally.errors, "503": tally.retried_503}


async def _poller_client(url: str, key: str, pollers: int, start_at: float, seconds: float) -> dict:
    tally, latencies = Tally(), []

    async def poller(c: httpx.AsyncClient) -> None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        while time.time() < start_at + seconds:
            t0 = time.time()
            await tally.call(lambda: c.get("/v1/jobs", params={"limit": 20}))
            latencies.append(time.time() - t0)
            await asyncio.sleep(0.5)

    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=HANG_S) as c:
        await asyncio.gather(*(poller(c) for _ in range(pollers)))
    return {"list_s": latencies, "errors": tally.errors, "503": tally.retried_503}


# --- the phases (run in the main process) -----------------------------------------------------------------


def _scans(db_url: str) -> int:
    """Table scans (sequential and index) on the benchmark schema's tables: a count of reading queries."""
    import sqlalchemy as sa

    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            query = (
                "SELECT COALESCE(SUM(seq_scan + COALESCE(idx_scan, 0)), 0) FROM pg_stat_user_tables "
                "WHERE schemaname = current_schema()"
            )
            return int(conn.scalar(sa.text(query)))
    finally:
        engine.dispose()


def _scans_per_s(db_url: str, seconds: float) -> float:
    # Postgres 15 publishes an idle backend's counters up to 10 s late: let the previous phase's arrive first.
    time.sleep(11)
    before = _scans(db_url)
    time.sleep(seconds)
    return round((_scans(db_url) - before) / seconds, 1)


def _start_jobs(
    c: httpx.Client, user: dict, worker: dict, n: int, from_job
) -> tuple[list[float], list[list]]:
    latencies, jobs = [], []
    for i in range(n):
        t0 = time.perf_counter()
        r = c.post("/v1/jobs", json=from_job(i), headers=user)
        latencies.append(time.perf_counter() - t0)
        if r.status_code != 201:
            raise RuntimeError(f"POST /v1/jobs answered {r.status_code}: {r.text[:300]}")
        jobs.append(r.json()["id"])
    started = []
    for jid in jobs:
        r = c.post(f"/internal/v1/jobs/{jid}/claim", json={"worker_id": "bench"}, headers=worker)
        r.raise_for_status()
        started.append([jid, r.json()["fence"]])
    return latencies, started


def _ingest(url: str, secret: str, jobs: list[list], seconds: float, tmp: Path) -> dict:
    halves = [jobs[0::2], jobs[1::2]]
    procs = []
    for i, part in enumerate(halves):
        out = tmp / f"ingest-{i}.json"
        args = {"url": url, "secret": secret, "jobs": part, "seconds": seconds, "batch": 1000}
        procs.append((_spawn("_ingest_client", args, out), out))
    parts = _collect(procs, seconds + HANG_S)
    accepted = sum(p["accepted"] for p in parts)
    elapsed = max(p["elapsed_s"] for p in parts)
    return {
        "ingest_metric_points_per_s": round(accepted / elapsed),
        "ingest_posters": len(jobs),
        "ingest_points": accepted,
        "ingest_errors": sum(len(p["errors"]) for p in parts),
        "ingest_503": sum(p["503"] for p in parts),
    }


def _reads(c: httpx.Client, user: dict, worker: dict, job: list, n: int) -> dict:
    jid, fence = job
    names = [f"reward/c{i}" for i in range(30)]
    total = 0
    for first in range(0, 3334, 100):  # 30 names x 3,334 steps = 100,020 points, 3,000 a batch
        points = [
            {"step": s, "name": name, "value": (s % 97) / 97}
            for s in range(first, min(first + 100, 3334))
            for name in names
        ]
        r = c.post(
            f"/internal/v1/jobs/{jid}/metrics", json={"fence": fence, "points": points}, headers=worker
        )
        r.raise_for_status()
        total += r.json()["accepted"]
    figures: dict[str, Any] = {"read_job_points": total}
    cases = {
        "read_page_10k": {},
        "read_chart_1000": {"max_points": 1000},
        "read_one_name_chart_500": {"max_points": 500, "names": names[0]},
    }
    for label, params in cases.items():
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            r = c.get(f"/v1/jobs/{jid}/metrics", params=params, headers=user)
            times.append(time.perf_counter() - t0)
            r.raise_for_status()
        figures[f"{label}_p50_ms"] = _round(statistics.median(times))
        figures[f"{label}_points"] = len(r.json()["data"])
    return figures


def _fleet(url: str, key: str, secret: str, db_url: str, jobs: list[list], opts: dict, tmp: Path) -> dict:
    figures: dict[str, Any] = {"scans_per_s_idle_0_subscribers": _scans_per_s(db_url, 10)}
    job_ids = [jid for jid, _ in jobs]
    per_proc = opts["subscriber_processes"]
    streams = [job_ids[i % len(job_ids)] for i in range(opts["subscribers"])]
    deadline = time.time() + READY_TIMEOUT_S + opts["duration"] + HANG_S
    subs = []
    for i in range(per_proc):
        ready, out = tmp / f"ready-{i}", tmp / f"subscribers-{i}.json"
        args = {
            "url": url,
            "key": key,
            "job_ids": streams[i::per_proc],
            "ready": str(ready),
            "deadline": deadline,
        }
        subs.append((_spawn("_subscriber_client", args, out), out, ready))
    t_end = time.monotonic() + READY_TIMEOUT_S
    while not all(ready.exists() for _, _, ready in subs):
        if time.monotonic() > t_end or any(p.exitcode not in (None, 0) for p, _, _ in subs):
            raise RuntimeError("the subscribers did not all connect")
        time.sleep(0.2)
    figures["scans_per_s_idle_with_subscribers"] = _scans_per_s(db_url, 10)
    start_at = time.time() + 2
    before = _scans(db_url)
    args = {"url": url, "secret": secret, "jobs": jobs, "start_at": start_at, "seconds": opts["duration"]}
    args.update(every=opts["every"], names=opts["names"], samples=opts["samples"])
    workers = [(_spawn("_worker_client", args, tmp / "workers.json"), tmp / "workers.json")]
    pargs = {
        "url": url,
        "key": key,
        "pollers": opts["pollers"],
        "start_at": start_at,
        "seconds": opts["duration"],
    }
    pollers = [(_spawn("_poller_client", pargs, tmp / "pollers.json"), tmp / "pollers.json")]
    (wres,) = _collect(workers, opts["duration"] + HANG_S)
    (pres,) = _collect(pollers, HANG_S)
    time.sleep(2)  # the last deliveries
    figures["scans_per_s_under_load"] = round((_scans(db_url) - before) / (time.time() - start_at), 1)
    with httpx.Client(base_url=url, timeout=HANG_S, headers={"Authorization": f"Bearer {secret}"}) as c:
        for jid, fence in jobs:  # a terminal status ends every stream
            c.post(f"/internal/v1/jobs/{jid}/finish", json={"fence": fence, "status": "succeeded"})
    sres = _collect([(p, out) for p, out, _ in subs], HANG_S)
    sent = {(jid, step): (t0, t1) for jid, step, t0, t1 in wres["sent"]}
    lags, after_answer, missing = [], [], 0
    steps_of: dict[str, set[int]] = {}
    for jid, step, _, _ in wres["sent"]:
        steps_of.setdefault(jid, set()).add(step)
    for part, proc_jobs in zip(sres, (streams[i::per_proc] for i in range(per_proc)), strict=True):
        got: dict[int, set[int]] = {}
        for i, jid, step, t in part["received"]:
            got.setdefault(i, set()).add(step)
            if (jid, step) in sent:
                lags.append(t - sent[(jid, step)][0])
                after_answer.append(t - sent[(jid, step)][1])
        missing += sum(len(steps_of.get(jid, set()) - got.get(i, set())) for i, jid in enumerate(proc_jobs))
    errors = wres["errors"] + pres["errors"] + [e for p in sres for e in p["errors"]]
    figures.update(
        {
            "delivery_lag": _ms(lags),
            # From the worker's POST answered to the subscriber's read (negative: the event came first).
            "delivery_after_post_answered": _ms(after_answer),
            "deliveries": len(lags),
            "deliveries_missing": missing,
            "worker_metrics_post": _ms(wres["post_s"]),
            "steps_posted": len(wres["sent"]),
            "list_jobs": _ms(pres["list_s"]),
            "fleet_errors": len(errors),
            "fleet_error_examples": errors[:5],
            "fleet_503_retried": wres["503"] + pres["503"] + sum(p["503"] for p in sres),
        }
    )
    return figures


def load(database_url: str | None, opts: dict) -> dict:
    """The whole ``--load`` run; ``opts`` holds the command line's sizes."""
    from benchmarks.api_bench import _api_env, _database, _job_body, _process
    from rlft_contracts.localproc import free_port
    from rlft_contracts.settings import Settings
    from service.db import migrate
    from service.keys import create_api_key

    if not database_url or not database_url.startswith("postgres"):
        raise SystemExit(
            "--load needs --database-url postgresql://… (LISTEN/NOTIFY and several API processes)"
        )
    with tempfile.TemporaryDirectory(prefix="rlft-load-") as tmp, _database(database_url, tmp) as db_url:
        tmp_path = Path(tmp)
        settings = Settings(data_dir=tmp, database_url=db_url, dev_mode=True)
        migrate(settings)
        key = create_api_key(settings, "fleet")
        (tmp_path / "prometheus").mkdir()
        env = _api_env(
            tmp,
            db_url,
            RLFT_RUN_BACKGROUND_TASKS="0",
            RLFT_MAX_ACTIVE_JOBS_PER_TENANT="1000000",
            PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prometheus"),
        )
        secret = env["RLFT_WORKER_SECRET"]
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        argv = [
            sys.executable,
            "-m",
            "rlft",
            "serve",
            "--port",
            str(port),
            "--workers",
            str(opts["api_processes"]),
        ]
        user, worker = {"Authorization": f"Bearer {key}"}, {"Authorization": f"Bearer {secret}"}
        result: dict[str, Any] = {"database": "postgres", "api_processes": opts["api_processes"]}
        with _process(argv, env, url, tmp_path / "api.log"), httpx.Client(base_url=url, timeout=HANG_S) as c:
            creates, fleet_jobs = _start_jobs(c, user, worker, opts["creates"], _job_body)
            result["job_create"] = _ms(creates)
            _, ingest_jobs = _start_jobs(c, user, worker, opts["ingest_posters"], _job_body)
            result.update(_ingest(url, secret, ingest_jobs, opts["ingest_s"], tmp_path))
            result.update(_reads(c, user, worker, fleet_jobs[-1], opts["reads"]))
            figures = _fleet(url, key, secret, db_url, fleet_jobs[: opts["workers"]], opts, tmp_path)
            result.update(figures)
        return result
