"""Which checkpoints a job keeps in the artifact store, and which one is best (issue 15).

Pure functions over the stored spec and the checkpoint rows; ``crud.checkpoints`` applies the plan after
each registration, the reaper's sweep removes the files of those let go once no download holds them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from rlcore.metrics import default_best_metric
from rlcore.spec import CheckpointPolicy as SpecCheckpointPolicy


@dataclass(frozen=True)
class CheckpointPolicy:
    best_metric: str
    best_mode: Literal["max", "min"]
    keep_last: int | None  # None: every checkpoint stays
    keep_best: int


def checkpoint_policy(spec: dict[str, Any]) -> CheckpointPolicy:
    """The job's ``checkpoints`` policy read from its stored spec, defaults resolved by the spec's own model
    (``rlcore.spec.CheckpointPolicy``): jobs stored before the fields existed read as the defaults."""
    stored = SpecCheckpointPolicy.model_validate(spec.get("checkpoints") or {})
    return CheckpointPolicy(
        best_metric=stored.best_metric or default_best_metric(spec),
        best_mode=stored.best_mode,
        keep_last=stored.keep_last,
        keep_best=stored.keep_best,
    )


class _Ckpt(Protocol):
    id: str
    step: int
    metrics: dict[str, Any]


@dataclass(frozen=True)
class Plan:
    keep: frozenset[str]  # ids that stay
    best: str | None  # the best of those that stay


def score(ckpt: _Ckpt, policy: CheckpointPolicy) -> float | None:
    value = (ckpt.metrics or {}).get(policy.best_metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def ranked(ckpts: Sequence[_Ckpt], policy: CheckpointPolicy) -> list[_Ckpt]:
    """Checkpoints that carry the metric, best first; on a tie the newer first."""
    sign = 1.0 if policy.best_mode == "max" else -1.0
    scored = [(s, c) for c in ckpts if (s := score(c, policy)) is not None]
    return [c for _, c in sorted(scored, key=lambda sc: (sign * sc[0], sc[1].step), reverse=True)]


def plan(ckpts: Sequence[_Ckpt], policy: CheckpointPolicy) -> Plan:
    """Keep the newest ``keep_last``, the best ``keep_best`` and the newest (a resume starts from it).

    The best is the top of the ranking among those kept; without any checkpoint carrying the metric, the
    newest.
    """
    if not ckpts:
        return Plan(frozenset(), None)
    by_step = sorted(ckpts, key=lambda c: c.step, reverse=True)
    best_first = ranked(ckpts, policy)
    if policy.keep_last is None:
        keep = {c.id for c in ckpts}
    else:
        keep = {c.id for c in by_step[: policy.keep_last]}
        keep |= {c.id for c in best_first[: policy.keep_best]}
        keep.add(by_step[0].id)
    best = next((c.id for c in best_first if c.id in keep), by_step[0].id)
    return Plan(frozenset(keep), best)
