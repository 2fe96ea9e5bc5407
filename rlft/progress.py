"""Following a job in a terminal: a live progress bar over the SSE stream, and a text chart of the reward.

Used by ``rlft logs -f``, ``rlft submit --follow`` and the demo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from rlft.client import Client, Event, Job

REWARD_KEYS = ("reward/mean", "reward", "rewards/mean")
# KL to the reference model when the job has one (kl_coef > 0); else the old-to-new policy KL of the update.
KL_KEYS = ("kl/mean", "kl", "policy/approx_kl")
_LEVEL_STYLE = {"warning": "yellow", "error": "bold red"}


@dataclass
class FollowResult:
    job: Job
    rewards: dict[int, float] = field(default_factory=dict)
    kls: dict[int, float] = field(default_factory=dict)
    events: int = 0


def first_metric(values: dict[str, float], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        if key in values:
            return values[key]
    return None


def _fmt(value: float | None) -> str:
    return "  —   " if value is None or not math.isfinite(value) else f"{value:6.3f}"


def make_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("step {task.completed:>4.0f}/{task.total:<4.0f}"),
        TextColumn("reward {task.fields[reward]}"),
        TextColumn("KL {task.fields[kl]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def follow_job(
    client: Client,
    job_id: str,
    *,
    console: Console | None = None,
    last_event_id: str | None = None,
    show_messages: bool = True,
) -> FollowResult:
    """Show the job's progress until it rests; return its final state and the curves seen on the way."""
    console = console or Console(stderr=True)
    job = client.jobs.get(job_id)
    result = FollowResult(job=job)
    with make_progress(console) as progress:
        task = progress.add_task(
            job.status, total=job.total_steps or 1, completed=job.step, reward=_fmt(None), kl=_fmt(None)
        )
        for event in client.jobs.stream_events(job_id, last_event_id=last_event_id):
            result.events += 1
            _apply(event, progress, task, result, show_messages)
    result.job = client.jobs.get(job_id)
    return result


def _apply(event: Event, progress: Progress, task: int, result: FollowResult, show_messages: bool) -> None:
    if event.type == "metrics":
        step, values = event.metrics()
        if step is None:
            return
        reward, kl = first_metric(values, REWARD_KEYS), first_metric(values, KL_KEYS)
        if reward is not None:
            result.rewards[step] = reward
        if kl is not None:
            result.kls[step] = kl
        update: dict = {"completed": step}
        if values.get("total_steps"):
            update["total"] = values["total_steps"]
        if reward is not None:
            update["reward"] = _fmt(reward)
        if kl is not None:
            update["kl"] = _fmt(kl)
        progress.update(task, **update)
    elif event.type == "status":
        status = event.status() or event.message
        progress.update(task, description=status)
        if show_messages:
            progress.console.print(f"[dim]status →[/] {status}")
    elif show_messages and event.message:
        style = _LEVEL_STYLE.get(event.level, "")
        message = escape(event.message)  # a message is data, not markup
        progress.console.print(f"[{style}]{event.level}[/]: {message}" if style else message, highlight=False)


def reward_chart(points: dict[int, float], *, width: int = 60, height: int = 8) -> str:
    """A small text chart of reward per step (columns are steps, bucketed to ``width``)."""
    if not points:
        return "(no reward points)"
    steps = sorted(points)
    buckets = _bucket([points[s] for s in steps], width)
    lo, hi = min(buckets), max(buckets)
    span = (hi - lo) or 1.0
    rows = []
    for r in range(height, 0, -1):
        threshold = lo + span * (r - 1) / height  # the bottom row is always full: a bar has a base
        label = f"{hi:7.3f} ┤" if r == height else f"{lo:7.3f} ┤" if r == 1 else "        │"
        rows.append(label + "".join("█" if v >= threshold else " " for v in buckets))
    rows.append("        └" + "─" * len(buckets))
    gap = " " * max(1, len(buckets) - 10 - len(str(steps[-1])))
    rows.append(f"         step {steps[0]}{gap}step {steps[-1]}")
    return "\n".join(rows)


def _bucket(values: list[float], width: int) -> list[float]:
    """Average consecutive values so that at most ``width`` columns remain."""
    if len(values) <= width:
        return values
    n = math.ceil(len(values) / width)
    return [sum(values[i : i + n]) / len(values[i : i + n]) for i in range(0, len(values), n)]


def reward_rose(points: dict[int, float], *, window: int = 3) -> bool:
    """Did the mean reward of the last steps beat that of the first ones?"""
    if len(points) < 2:
        return False
    values = [points[s] for s in sorted(points)]
    k = max(1, min(window, len(values) // 2))
    return sum(values[-k:]) / k > sum(values[:k]) / k
