"""PPO without hand-tuning: steps to mean reward 0.9 on the letter task over a grid, PPO at its defaults
against GRPO at its defaults with the same number of completions per step.

    python benchmarks/ppo_robustness.py                  # run (or resume) the grid, 2 runs at a time
    python benchmarks/ppo_robustness.py --table          # the table for BENCHMARKS.md from the results
    python benchmarks/ppo_robustness.py --memory         # peak RSS: GRPO, PPO separate, PPO shared (small)

Grid: learning rate {3e-3, 1e-2, 2e-2} x completion length {8, 32} x completions per step {16, 32} x seeds
{1, 2, 3}, on the tiny random model (``rlcore.testing``), reward = fraction of 'a' characters
(``benchmarks/engines.py``). PPO: ``prompts_per_step`` = completions, ``group_size`` 1; GRPO: completions / 8
prompts x its default group of 8. Everything else is each algorithm's default (``kl_coef`` 0 in both).

"Steps to 0.9" is the first step whose mean reward (the step's mean over all its completions, no moving
window) is >= 0.9. A run goes on until the reward has held >= 0.9 for 3 steps in a row (the learning
test's criterion: "held"), or to ``--cap`` steps (300). Each run is its own process with one torch
thread; at most ``--parallel`` run at once. Results are appended to ``.bench/ppo_robustness.jsonl`` as each
run ends, and a rerun skips the runs already there, so an interrupted grid resumes. Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".bench"
RESULTS = WORK / "ppo_robustness.jsonl"
TARGET = 0.9
GRID = {"lr": [3e-3, 1e-2, 2e-2], "length": [8, 32], "completions": [16, 32], "seed": [1, 2, 3]}
GRPO_GROUP = 8


def cell_spec(algorithm: str, lr: float, length: int, completions: int, seed: int, cap: int, overrides: dict):
    from benchmarks.engines import ROWS
    from rlcore.spec import JobSpec

    hp = {
        "steps": cap,
        "max_new_tokens": length,
        "learning_rate": lr,
        "seed": seed,
        "checkpoint_every": 0,
        "samples_per_step": 0,
    }
    if algorithm == "ppo":
        hp["prompts_per_step"] = completions
    else:
        hp.update(prompts_per_step=completions // GRPO_GROUP, group_size=GRPO_GROUP)
    hp.update(overrides)
    return JobSpec.model_validate(
        {
            "algorithm": algorithm,
            "model": {"name_or_path": str(tiny_model())},
            "dataset": {"rows": ROWS},
            "hyperparameters": hp,
        }
    )


def tiny_model() -> Path:
    from rlcore.testing import make_tiny_model

    return make_tiny_model(WORK / "model-tiny", "tiny")


def run_one(run: dict) -> dict:
    """One run, in this process: the per-step mean rewards and the first step at the target."""
    import shutil

    import torch

    from benchmarks.engines import letter_reward
    from rlcore.callbacks import Callback
    from rlcore.errors import Interrupted, RLFTError
    from rlcore.trainer import train

    torch.set_num_threads(1)
    spec = cell_spec(
        **{k: run[k] for k in ("algorithm", "lr", "length", "completions", "seed", "cap")},
        overrides=run["overrides"],
    )
    rewards: list[float] = []

    class Curve(Callback):
        def on_step_end(self, step, metrics):
            rewards.append(metrics["reward/mean"])

    workdir = WORK / "ppo_robustness" / f"{os.getpid()}"
    shutil.rmtree(workdir, ignore_errors=True)
    t0, error = time.perf_counter(), None
    try:
        train(
            spec,
            workdir,
            reward_fn=letter_reward,
            callbacks=[Curve()],
            resume=False,
            should_stop=lambda: _held(rewards) is not None,
        )
    except Interrupted:
        pass  # stopped once the target held
    except RLFTError as e:  # a diverged run is a result too
        error = f"{e.code}: {e}"
    shutil.rmtree(workdir, ignore_errors=True)
    reached = next((i + 1 for i, r in enumerate(rewards) if r >= TARGET), None)
    return {
        **run,
        "steps_to_target": reached,
        "steps_to_hold": _held(rewards),
        "steps_run": len(rewards),
        "rewards": rewards,
        "seconds": time.perf_counter() - t0,
        "error": error,
    }


def _held(rewards: list[float], hold: int = 3) -> int | None:
    """The step at which the reward had been >= the target for ``hold`` steps in a row, if it has."""
    for i in range(hold - 1, len(rewards)):
        if min(rewards[i - hold + 1 : i + 1]) >= TARGET:
            return i + 1
    return None


def key(run: dict) -> tuple:
    return (run["label"], run["algorithm"], run["lr"], run["length"], run["completions"], run["seed"])


def load_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by an interrupted write
    return out


def planned_runs(args) -> list[dict]:
    """Seed-major order, PPO and GRPO of a cell side by side: a partial grid covers every cell once first."""
    overrides = json.loads(args.set) if args.set else {}
    runs = []
    for seed, lr, length, completions in itertools.product(
        GRID["seed"], GRID["lr"], GRID["length"], GRID["completions"]
    ):
        if args.seeds and seed not in args.seeds:
            continue
        for algorithm in args.algorithms:
            runs.append(
                {
                    "label": args.label,
                    "algorithm": algorithm,
                    "lr": lr,
                    "length": length,
                    "completions": completions,
                    "seed": seed,
                    "cap": args.cap,
                    "overrides": overrides if algorithm == "ppo" else {},
                }
            )
    return runs


def run_grid(args) -> None:
    done = {key(r) for r in load_results(args.results)}
    todo = [r for r in planned_runs(args) if key(r) not in done]
    log(f"{len(todo)} runs to do ({len(done)} already in {args.results}), {args.parallel} at a time")
    lock = threading.Lock()
    args.results.parent.mkdir(parents=True, exist_ok=True)

    def child(run: dict) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(run)]
        env = {
            **os.environ,
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONWARNINGS": "ignore",
            "OMP_NUM_THREADS": "1",
        }
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            log(f"run failed ({proc.returncode}): {run}\n{proc.stderr[-2000:]}")
            return
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        with lock:
            with args.results.open("a") as f:
                f.write(json.dumps(result) + "\n")
        log(
            f"{run['algorithm']:4} lr={run['lr']:g} len={run['length']} n={run['completions']} "
            f"seed={run['seed']}: {result['steps_to_target'] or 'not reached'} "
            f"(held at {result['steps_to_hold']}) "
            f"({result['steps_run']} steps, {result['seconds']:.0f} s)"
        )

    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        list(pool.map(child, todo))


def _median(values: list[float | None]) -> float | None:
    """Median with runs that missed the target counted as +inf; None when that median is one of them."""
    m = statistics.median([v if v is not None else float("inf") for v in values])
    return None if m == float("inf") else m


def render_table(results: list[dict], label: str, cap: int) -> str:
    results = [r for r in results if r["label"] == label]
    by_cell: dict[tuple, dict[str, list]] = {}
    for r in results:
        by_cell.setdefault((r["lr"], r["length"], r["completions"]), {}).setdefault(
            r["algorithm"], []
        ).append(r)
    lines = [
        "| lr | length | completions/step | PPO reached (held) | PPO steps (per seed) | PPO median "
        "| GRPO reached (held) | GRPO steps (per seed) | GRPO median | PPO / GRPO |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    misses, slow = [], []
    for lr, length, completions in itertools.product(GRID["lr"], GRID["length"], GRID["completions"]):
        cell = by_cell.get((lr, length, completions), {})
        cols = []
        medians = {}
        for algo in ("ppo", "grpo"):
            runs = sorted(cell.get(algo, []), key=lambda r: r["seed"])
            if not runs:
                cols += ["not run", "—", "—"]
                continue
            steps = [r["steps_to_target"] for r in runs]
            medians[algo] = _median(steps)
            per_seed = ", ".join(
                str(s) if s is not None else f">{r['steps_run']}" for s, r in zip(steps, runs, strict=True)
            )
            reached = sum(s is not None for s in steps)
            held = sum(r.get("steps_to_hold") is not None for r in runs)
            med = f"{medians[algo]:g}" if medians[algo] is not None else f">{cap}"
            cols += [f"{reached}/{len(runs)} ({held})", per_seed, med]
        ratio = "—"
        if medians.get("ppo") and medians.get("grpo"):
            ratio = f"{medians['ppo'] / medians['grpo']:.2f}"
            if medians["ppo"] > 2 * medians["grpo"]:
                slow.append((lr, length, completions))
        ppo_runs = {r["seed"]: r for r in cell.get("ppo", [])}
        for g in cell.get("grpo", []):
            p = ppo_runs.get(g["seed"])
            if g["steps_to_target"] is not None and p is not None and p["steps_to_target"] is None:
                misses.append((lr, length, completions, g["seed"]))
        lines.append(f"| {lr:g} | {length} | {completions} | " + " | ".join(cols) + f" | {ratio} |")
    n = {a: sum(r["algorithm"] == a for r in results) for a in ("ppo", "grpo")}
    lines.append("")
    lines.append(
        f"Runs: PPO {n['ppo']}, GRPO {n['grpo']} of {len(list(itertools.product(*GRID.values())))} each. "
        f"Runs where GRPO reached 0.9 and PPO did not: {len(misses)} {misses if misses else ''}. "
        f"Cells where PPO's median is more than 2x GRPO's: {len(slow)} {slow if slow else ''}."
    )
    return "\n".join(lines)


def memory(args) -> None:
    """Peak RSS of GRPO, PPO separate and PPO shared at equal batch on the small model (run.py's method)."""
    from benchmarks.run import memory_by_variant
    from rlcore.testing import make_tiny_model

    model = str(make_tiny_model(WORK / "model-small", "small"))
    ns = argparse.Namespace(mem_repeats=args.mem_repeats, threads=1, lr=2e-2)
    res = memory_by_variant(ns, model, ["grpo", "ppo", "ppo_shared"])
    print("| GRPO | PPO separate | PPO shared |\n|---|---|---|")
    print("| " + " | ".join(f"{statistics.median(res[v]):.0f}" for v in ["grpo", "ppo", "ppo_shared"]) + " |")
    print(json.dumps(res))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parallel", type=int, default=2, help="runs at once (one torch thread each)")
    p.add_argument("--cap", type=int, default=300, help="steps after which a run counts as not reached")
    p.add_argument("--algorithms", default="ppo,grpo")
    p.add_argument("--seeds", default="", help="comma list: only these seeds (default: all)")
    p.add_argument("--set", default="", help="JSON overrides of PPO hyperparameters (an experiment)")
    p.add_argument("--label", default="defaults", help="name of this set of runs in the results")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--table", action="store_true", help="print the table from the results and exit")
    p.add_argument("--memory", action="store_true", help="measure peak memory and exit")
    p.add_argument("--mem-repeats", type=int, default=2)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child: one run, JSON on stdout
    args = p.parse_args()
    args.algorithms = [a for a in args.algorithms.split(",") if a]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
    elif args.table:
        print(render_table(load_results(args.results), args.label, args.cap))
    elif args.memory:
        memory(args)
    else:
        tiny_model()  # built once, before runs race to build it
        run_grid(args)
        print(render_table(load_results(args.results), args.label, args.cap))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
