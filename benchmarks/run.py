"""rlcore against TRL's GRPOTrainer, side by side: ``python benchmarks/run.py [--quick]`` (or ``make bench``).

What it runs (each engine run in its own process, see ``benchmarks/engines.py``):
1. Interleaved pairs, per repeat and model size: rlcore GRPO then TRL GRPO, next repeat TRL first (so machine
   drift hits both), same model directory, prompts, reward callable, seed and hyperparameters; each run
   runs ``--steps`` steps (per model size). Reported as ratios rlcore / TRL of the pair
   (min / median / max over repeats): seconds per step after ``--warmup`` steps, steps and seconds to reward
   >= 0.9, peak resident memory.
2. rlcore GRPO vs PPO peak memory on the small model at equal batch (16 completions).
3. rlcore's step split into generate / reward / train (from the runs of 1).
4. The reward phase against the example HTTP reward server with 50 ms latency per request, against the
   ideal ``latency x ceil(batches / concurrency)``.
5. API figures (``benchmarks/api_bench.py``): job create p50, metric points ingested per second.

Writes ``benchmarks/out/results.json`` and ``benchmarks/out/results.md`` (the tables for BENCHMARKS.md).
Nothing here runs in ``make test``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rlft_contracts.localproc import free_port, uvicorn_command

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
WORK = ROOT / ".bench"
TARGET = 0.9


def _child(engine: str, model: str, tag: str, threads: int, **opts) -> dict:
    out = WORK / "runs" / f"{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    # A fresh output directory: rlcore replays the rewards recorded in one (resume), which would skip the
    # reward phase of a rerun with the same seed.
    shutil.rmtree(WORK / "work" / tag, ignore_errors=True)
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "engines.py"),
        engine,
        "--model",
        model,
        "--workdir",
        str(WORK / "work" / tag),
        "--out",
        str(out),
        "--threads",
        str(threads),
    ]
    for k, v in opts.items():
        if v is not None:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} run {tag} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def summarize(run: dict, warmup: int) -> dict:
    """Seconds per step after warm-up, steps and seconds to the target, peak RSS, phase medians."""
    ends, rewards = run["step_end"], run["rewards"]
    intervals = [b - a for a, b in zip(ends, ends[1:], strict=False)][max(0, warmup - 1) :]
    hit = next((i for i, r in enumerate(rewards) if r >= TARGET), None)
    start = run.get("train_start") or 0.0
    split = {
        k: statistics.median(v[warmup:] or v)
        for k, v in run.get("split", {}).items()
        if k.startswith("time/")
    }
    return {
        "s_per_step": statistics.median(intervals) if intervals else math.nan,
        "steps_to_target": hit + 1 if hit is not None else None,
        "s_to_target": ends[hit] - start if hit is not None else None,
        "peak_rss_mb": run["peak_rss_bytes"] / 2**20,
        "steps": len(rewards),
        "final_reward": rewards[-1] if rewards else math.nan,
        "split": split,
    }


def compare_engines(args, models: dict[str, str]) -> dict:
    results: dict[str, list] = {size: [] for size in models}
    for rep in range(args.repeats):
        for size, model in models.items():
            order = ["rlcore", "trl"] if rep % 2 == 0 else ["trl", "rlcore"]
            pair = {}
            for engine in order:
                t0 = time.time()
                # A fixed number of steps, no early stop: the step times after the target count too, and
                # steps/seconds to the target come from the curve.
                run = _child(
                    engine,
                    model,
                    f"{size}-{engine}-{rep}",
                    args.threads,
                    steps=args.steps[size],
                    seed=rep,
                    lr=args.lr,
                )
                pair[engine] = summarize(run, args.warmup)
                pair[engine]["rewards"] = run["rewards"]
                log(
                    f"  {size} rep {rep} {engine}: {pair[engine]['s_per_step']:.3f} s/step, "
                    f"{pair[engine]['steps_to_target']} steps to {TARGET}, "
                    f"{pair[engine]['peak_rss_mb']:.0f} MiB "
                    f"({time.time() - t0:.0f} s)"
                )
            results[size].append(pair)
    return results


def ratios(pairs: list[dict], key: str) -> list[float]:
    out = []
    for p in pairs:
        a, b = p["rlcore"].get(key), p["trl"].get(key)
        if a is not None and b:
            out.append(a / b)
    return out


def memory_grpo_vs_ppo(args, model: str) -> dict:
    return memory_by_variant(args, model, ["grpo", "ppo"])


# A variant: the algorithm, and for PPO the critic (``ppo`` is the default, separate critic).
VARIANTS = {"grpo": ("grpo", None), "ppo": ("ppo", "separate"), "ppo_shared": ("ppo", "shared")}


def memory_by_variant(args, model: str, variants: list[str]) -> dict:
    """Peak RSS (MiB) of each variant's own process, at equal batch (16 completions), order alternated."""
    out: dict[str, list[float]] = {v: [] for v in variants}
    for rep in range(args.mem_repeats):
        for variant in variants if rep % 2 == 0 else variants[::-1]:
            algo, value_model = VARIANTS[variant]
            run = _child(
                "rlcore",
                model,
                f"mem-{variant}-{rep}",
                args.threads,
                steps=3,
                seed=rep,
                lr=args.lr,
                algorithm=algo,
                value_model=value_model,
            )
            out[variant].append(run["peak_rss_bytes"] / 2**20)
            log(f"  memory {variant} rep {rep}: {out[variant][-1]:.0f} MiB")
    return out


def reward_latency(args, model: str, delay_ms: float = 50.0) -> list[dict]:
    """rlcore's reward phase against examples/rewards/letter.py with ``delay_ms`` per request."""
    import httpx

    port = free_port()
    env = {**os.environ, "RLFT_REWARD_DELAY_MS": str(delay_ms)}
    server = subprocess.Popen(
        uvicorn_command("examples.rewards.letter:app", port),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/docs", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the example reward server did not start") from None
                time.sleep(0.2)
        rows = []
        for batch_size, concurrency in [(2, 4), (1, 16), (4, 1)]:
            run = _child(
                "rlcore",
                model,
                f"reward-{batch_size}-{concurrency}",
                args.threads,
                steps=6,
                lr=args.lr,
                reward_url=url,
                reward_batch_size=batch_size,
                reward_concurrency=concurrency,
            )
            measured = run["split"]["time/reward_s"][1:]  # the first step opens the connections
            batches = math.ceil(16 / batch_size)
            ideal = delay_ms / 1000 * math.ceil(batches / concurrency)
            p50 = run["split"].get("reward_endpoint/latency_p50_ms", [math.nan])[1:] or [math.nan]
            rows.append(
                {
                    "batch_size": batch_size,
                    "concurrency": concurrency,
                    "batches": batches,
                    "ideal_s": ideal,
                    "median_s": statistics.median(measured),
                    "max_s": max(measured),
                    "request_p50_ms": statistics.median(p50),
                    "bare_client_s": bare_client(url, batches, batch_size, concurrency),
                }
            )
            log(f"  reward bs={batch_size} c={concurrency}: {rows[-1]['median_s']:.3f} s (ideal {ideal:.3f})")
        return rows
    finally:
        server.terminate()
        server.wait(10)


def bare_client(url: str, requests: int, batch_size: int, concurrency: int, repeats: int = 5) -> float:
    """Median wall time of the same requests from a bare ``httpx.AsyncClient`` with the same concurrency
    cap: the floor that this server on this machine allows, whatever the client."""
    import asyncio

    import httpx

    body = {"items": [{"id": str(i), "completion": "aab"} for i in range(batch_size)]}

    async def one_step(client: httpx.AsyncClient, gate: asyncio.Semaphore) -> float:
        async def post() -> None:
            async with gate:
                (await client.post(url, json=body)).raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*[post() for _ in range(requests)])
        return time.perf_counter() - t0

    async def run() -> float:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            gate = asyncio.Semaphore(concurrency)
            await one_step(client, gate)  # opens the connections, as the first training step does
            return statistics.median([await one_step(client, gate) for _ in range(repeats)])

    return asyncio.run(run())


def machine() -> dict:
    import torch
    import transformers

    try:
        import trl

        trl_version = trl.__version__
    except ImportError:
        trl_version = None
    cpu = platform.processor()
    try:
        cpu = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gib": round(mem_gb, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl_version,
        "commit": commit.stdout.strip(),
        "load_avg_start": os.getloadavg(),
    }


def _mmm(values: list[float], fmt: str = "{:.2f}") -> str:
    if not values:
        return "n/a"
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def _med(values: list, fmt: str = "{:.2f}") -> str:
    values = [v for v in values if v is not None]
    return fmt.format(statistics.median(values)) if values else "not reached"


def render(res: dict) -> str:
    m, cfg = res["machine"], res["config"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB; Python {m['python']}, "
        f"torch {m['torch']}, "
        f"transformers {m['transformers']}, TRL {m['trl']}; commit {m['commit']}; load average at start "
        f"{m['load_avg_start'][0]:.1f}, at end {res['load_avg_end'][0]:.1f}.",
        f"Command: `{cfg['command']}` ({cfg['repeats']} repeats, {cfg['threads'] or 'default'} torch threads "
        f"in both engines, warm-up {cfg['warmup']} steps excluded, lr {cfg['lr']}, steps per run "
        f"{cfg['steps']}; 'to reward 0.9' is the first step whose mean reward is >= 0.9).",
        "",
        "| model | metric | rlcore (median) | TRL (median) | ratio rlcore/TRL min / median / max |",
        "|---|---|---|---|---|",
    ]
    for size, pairs in res["engines"].items():
        for key, label, fmt in [
            ("s_per_step", "seconds per step", "{:.3f}"),
            ("steps_to_target", "steps to reward 0.9", "{:.0f}"),
            ("s_to_target", "seconds to reward 0.9", "{:.1f}"),
            ("peak_rss_mb", "peak RSS (MiB)", "{:.0f}"),
        ]:
            a = [p["rlcore"][key] for p in pairs]
            b = [p["trl"][key] for p in pairs]
            lines.append(
                f"| {size} | {label} | {_med(a, fmt)} | {_med(b, fmt)} | {_mmm(ratios(pairs, key))} |"
            )
    lines += [
        "",
        "Step split (median seconds after warm-up, median over repeats; TRL's generate is its "
        "`_generate_single_turn`, the rest of its step is reward + update + bookkeeping):",
        "",
        "| model | rlcore generate | rlcore reward | rlcore train | rlcore step | TRL generate | TRL rest | "
        "TRL step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size, pairs in res["engines"].items():
        s = [p["rlcore"]["split"] for p in pairs]
        cols = [
            _med([x.get(f"time/{k}_s") for x in s], "{:.3f}") for k in ("generate", "reward", "train", "step")
        ]
        trl_gen = [p["trl"]["split"].get("time/generate_s") for p in pairs]
        trl_step = [p["trl"]["s_per_step"] for p in pairs]
        trl_rest = [b - a for a, b in zip(trl_gen, trl_step, strict=True) if a is not None]
        cols += [_med(trl_gen, "{:.3f}"), _med(trl_rest, "{:.3f}"), _med(trl_step, "{:.3f}")]
        lines.append(f"| {size} | " + " | ".join(cols) + " |")
    if res.get("memory"):
        g, p = res["memory"]["grpo"], res["memory"]["ppo"]
        lines += [
            "",
            "Peak RSS, rlcore on the small model, 16 completions per step (MiB, min / median / max):",
            "",
            "| GRPO | PPO | PPO - GRPO |",
            "|---|---|---|",
            f"| {_mmm(g, '{:.0f}')} | {_mmm(p, '{:.0f}')} | "
            f"{statistics.median(p) - statistics.median(g):+.0f} |",
        ]
    if res.get("reward"):
        lines += [
            "",
            "Reward phase against `examples/rewards/letter.py` with 50 ms per request, 16 completions:",
            "",
            "| batch size | concurrency | requests | ideal (s) | measured median (s) | ratio | max (s) "
            "| request latency p50 (ms) | bare httpx client, same requests (s) | rlcore / bare |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in res["reward"]:
            bare = r.get("bare_client_s", math.nan)
            lines.append(
                f"| {r['batch_size']} | {r['concurrency']} | {r['batches']} | {r['ideal_s']:.3f} | "
                f"{r['median_s']:.3f} | {r['median_s'] / r['ideal_s']:.2f} | {r['max_s']:.3f} | "
                f"{r.get('request_p50_ms', math.nan):.1f} | {bare:.3f} | {r['median_s'] / bare:.2f} |"
            )
    if res.get("api"):
        a = res["api"]
        lines += [
            "",
            f"API ({a['database']}, one client, sequential): job create p50 {a['job_create_p50_ms']:.1f} ms "
            f"(p95 {a['job_create_p95_ms']:.1f} ms, {a['jobs']} jobs); metric ingestion "
            f"{a['metric_points_per_s']:.0f} points/s ({a['metric_batches']} batches of "
            f"{a['metric_batch_points']} points); SSE delivery lag p50 {a['sse_lag_p50_ms']:.0f} ms, "
            f"max {a['sse_lag_max_ms']:.0f} ms.",
        ]
    return "\n".join(lines) + "\n"


def log(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 repeat, tiny model only, short runs (~3 minutes)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sizes", default="tiny,small")
    p.add_argument(
        "--steps",
        default="tiny=24,small=12",
        help="steps per run and model size (the tiny model needs ~13 to reach 0.9, the small ~5)",
    )
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-2)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in BOTH engines (0: torch's default, one per core)",
    )
    p.add_argument("--mem-repeats", type=int, default=2)
    p.add_argument("--skip", default="", help="comma list of sections to skip: engines,memory,reward,api")
    args = p.parse_args()
    if args.quick:
        args.repeats, args.sizes, args.steps, args.mem_repeats = 1, "tiny", "tiny=16", 1
    args.steps = {k: int(v) for k, v in (item.split("=") for item in args.steps.split(","))}
    skip = set(filter(None, args.skip.split(",")))
    from rlcore.testing import make_tiny_model

    sizes = [s for s in args.sizes.split(",") if s]
    models = {s: str(make_tiny_model(WORK / f"model-{s}", s)) for s in sizes}
    res: dict = {"machine": machine(), "config": {**vars(args), "command": " ".join(["python"] + sys.argv)}}
    if "engines" not in skip:
        log("engines, interleaved:")
        res["engines"] = compare_engines(args, models)
    else:
        res["engines"] = {}
    if "memory" not in skip:
        log("GRPO vs PPO memory:")
        mem_model = models.get("small") or str(make_tiny_model(WORK / "model-small", "small"))
        res["memory"] = memory_grpo_vs_ppo(args, mem_model)
    if "reward" not in skip:
        log("reward latency:")
        res["reward"] = reward_latency(args, models.get("tiny") or str(make_tiny_model(WORK / "model-tiny")))
    if "api" not in skip:
        log("API:")
        from benchmarks.api_bench import measure

        res["api"] = measure(jobs=20 if args.quick else 100, batches=10 if args.quick else 50)
    res["load_avg_end"] = os.getloadavg()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(res, indent=1))
    md = render(res)
    (OUT / "results.md").write_text(md)
    sys.stdout.write(md)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
