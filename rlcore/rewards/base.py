"""What every reward source shares: the item to score, the result of a batch, and the scorer protocol.

A scorer turns the completions of one step into one reward each. The trainer does not care whether the
rewards come from an HTTP endpoint (``rlcore.rewards.http``) or a Python function
(``rlcore.rewards.callable``): both return a ``RewardBatchResult`` whose lists are in item order.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from rlcore.errors import RewardInvalid

OnError = Literal["fail", "skip_sample", "zero"]
# How a completion ended: by itself (an EOS token) or cut at max_new_tokens (OpenAI's finish_reason values).
FinishReason = Literal["stop", "length"]

METRIC_P50 = "reward_endpoint/latency_p50_ms"
METRIC_P95 = "reward_endpoint/latency_p95_ms"
METRIC_ERRORS = "reward_endpoint/errors"
METRIC_RETRIES = "reward_endpoint/retries"
METRIC_REQUESTS = "reward_endpoint/requests"


@dataclass(frozen=True)
class RewardItem:
    """One completion to score. ``id`` is unique within a step (the trainer uses ``"<step>-<group>-<i>"``)."""

    id: str
    prompt: str
    completion: str
    group: int
    label: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)
    finish_reason: FinishReason = "stop"


@dataclass
class RewardBatchResult:
    """Rewards for a list of items, in the items' order.

    ``rewards[i]`` is None only under ``on_error="skip_sample"`` (the item's scorer reported an error and
    the trainer must drop the sample); ``errors[i]`` then says why. ``components[i]`` holds the optional
    named parts of a reward (``{"format": 1.0, "correct": 0.0}``). ``metrics`` are namespaced
    ``reward_endpoint/...``: latency p50/p95 in ms, errors (per-item errors + failed requests), retries,
    requests.
    """

    rewards: list[float | None]
    errors: list[str | None]
    components: list[dict[str, float] | None]
    metrics: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class RewardScorer(Protocol):
    """Anything that scores the completions of a step. ``score`` raises an ``rlcore.errors.RLFTError``
    (``RewardInvalid``, ``RewardEndpointUnreachable``, ...) when the step cannot be scored."""

    def score(self, step: int, items: list[RewardItem]) -> RewardBatchResult: ...

    def close(self) -> None: ...


def finite_number(value: Any) -> float | None:
    """``value`` as a float when it is a finite real number (not a bool, not a numeric string), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        # numpy scalars are not int/float subclasses (except float64); they expose .item().
        item = getattr(value, "item", None)
        if item is None or getattr(value, "ndim", 0) != 0:
            return None
        value = item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
    number = float(value)
    return number if math.isfinite(number) else None


def describe_value(value: Any) -> str:
    """How a bad reward value reads in an error message: ``NaN``, ``inf``, ``'abc' (a str)``, ``missing``."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value is None:
        return "null"
    return f"{value!r:.60} (a {type(value).__name__})"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_metrics(latencies_ms: list[float], errors: int, retries: int, requests: int) -> dict[str, float]:
    return {
        METRIC_P50: percentile(latencies_ms, 50),
        METRIC_P95: percentile(latencies_ms, 95),
        METRIC_ERRORS: float(errors),
        METRIC_RETRIES: float(retries),
        METRIC_REQUESTS: float(requests),
    }


def resolve_item_error(
    on_error: OnError, item_id: str, error: str, source: str, setting: str = "reward.on_error"
) -> float | None:
    """The reward an item with an ``error`` gets under the ``on_error`` policy; ``fail`` raises."""
    if on_error == "fail":
        raise RewardInvalid(
            f"{source} reported an error for item {item_id!r}: {error} "
            f"({setting} is 'fail'; set it to 'skip_sample' or 'zero' to carry on past such items)"
        )
    return 0.0 if on_error == "zero" else None


def component_metrics(components: list[dict[str, float] | None]) -> dict[str, float]:
    """``reward/<name>/mean`` and ``reward/<name>/std`` of each named component, over the items that
    have it."""
    values: dict[str, list[float]] = {}
    for parts in components:
        for name, value in (parts or {}).items():
            values.setdefault(name, []).append(value)
    out: dict[str, float] = {}
    for name, xs in sorted(values.items()):
        mean = sum(xs) / len(xs)
        out[f"reward/{name}/mean"] = mean
        out[f"reward/{name}/std"] = (
            math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
        )
    return out


def local_run_id() -> str:
    """The ``job_id`` of a run outside the service: unique per run, so that no two runs' keys ever meet."""
    return f"local-{uuid.uuid4().hex[:12]}"
