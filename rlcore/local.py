"""``rlft train SPEC.yaml --local``: run a job on this machine without the service.

Writes checkpoints under the output directory and ``metrics.jsonl`` there (one JSON object per step,
``{"step": 3, "reward/mean": 0.41, ...}``), with a rich progress bar. SIGTERM/SIGINT stop after the current
step with a checkpoint; running the same command again resumes from it.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from rlcore.callbacks import Callback
from rlcore.errors import Interrupted, RLFTError


class MetricsFile(Callback):
    """Appends one JSON line per step; on resume, drops the lines of steps that will be run again."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_start(self, step: int, total_steps: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= step:
                        kept.append(line)
                except ValueError:
                    continue
        self.path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")

    def on_step_end(self, step: int, metrics: dict[str, float]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")


class SamplesFile(Callback):
    def __init__(self, path: Path):
        self.path = path

    def on_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            for s in samples:
                f.write(json.dumps({"step": step, **s}, default=str) + "\n")


class ProgressBar(Callback):
    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.progress = None

    def on_train_start(self, step: int, total_steps: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.task = self.progress.add_task("train", total=total_steps, completed=step, info="")
        self.progress.start()

    def on_step_end(self, step: int, metrics: dict[str, float]) -> None:
        shown = (("reward/mean", "reward", 3), ("kl/mean", "kl", 4), ("eval/reward/mean", "eval", 3))
        info = "  ".join(f"{label} {metrics[k]:.{n}f}" for k, label, n in shown if k in metrics)
        self.progress.update(self.task, completed=step, info=info)

    def on_event(self, level: str, message: str, data=None) -> None:
        self.console.print(f"[{level}] {message}")

    def on_train_end(self, status: str, error=None) -> None:
        if self.progress is not None:
            self.progress.stop()


def run_local(spec_path: str, output_dir: str, reward_fn: str | None = None, resume: bool = True) -> int:
    """Run a spec file locally; returns a process exit code (0 ok, 1 failed, 130 interrupted)."""
    from rich.console import Console

    from rlcore.rewards.callable import load_callable
    from rlcore.rewards.urlpolicy import RewardURLPolicy
    from rlcore.spec import load_spec
    from rlcore.trainer import train

    console = Console(stderr=True)
    try:
        spec = load_spec(spec_path)
    except (OSError, ValueError) as e:
        console.print(f"[red]error:[/red] {spec_path}: {e}")
        return 2
    out = Path(output_dir)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        fn = load_callable(reward_fn) if reward_fn else None
        result = train(
            spec,
            out,
            reward_fn=fn,
            resume=resume,
            should_stop=stop.is_set,
            url_policy=RewardURLPolicy.local(),  # the user's own machine: a reward server on localhost
            callbacks=[
                MetricsFile(out / "metrics.jsonl"),
                SamplesFile(out / "samples.jsonl"),
                ProgressBar(console),
            ],
        )
    except Interrupted as e:
        console.print(f"[yellow]{e.message}[/yellow]; run the same command again to resume")
        return 130
    except RLFTError as e:
        console.print(f"[red]error ({e.code}):[/red] {e.message}")
        return 1
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    console.print(
        f"done: {result.step} steps; checkpoint {result.last_checkpoint}; metrics {out / 'metrics.jsonl'}"
    )
    return 0


if __name__ == "__main__":  # python -m rlcore.local SPEC OUTPUT [module:function]
    sys.exit(run_local(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None))
