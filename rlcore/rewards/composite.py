"""Several rewards with weights: ``total = Σ weight × component`` (TRL's ``reward_weights``, OpenAI's multi).

Each entry of ``spec.rewards`` is a scorer of its own (an ``HTTPRewardClient`` or a ``GraderScorer``); they
all score the step at once, HTTP entries waiting on their endpoints while graders compute. Per item:

- each entry's value is the component ``<name>``; an HTTP entry's own components (v1 ``components``,
  OpenRLHF ``extra_logs``) come along as ``<name>/<part>``;
- an entry that drops the item (``on_error: skip_sample``) drops it from the total too; ``zero`` scores the
  component 0; ``fail`` fails the step, as for a single endpoint;
- item errors are joined, each prefixed with its entry's name;
- an entry with ``truncated_score`` gives that value to an item cut at max_new_tokens (``finish_reason``
  "length") in place of its score (TRL's ``mask_truncated_completions``, as a reward a spec can weigh).

Metrics keep each endpoint's own ``reward_endpoint/<name>/...`` namespace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rlcore.rewards.base import RewardBatchResult, RewardItem, RewardScorer


class CompositeScorer:
    """A ``RewardScorer`` summing the weighted scores of ``entries`` (``(spec entry, scorer)`` pairs)."""

    def __init__(self, entries: Sequence[tuple[Any, RewardScorer]]):
        if not entries:
            raise ValueError("CompositeScorer needs at least one entry")
        self.entries = list(entries)
        self._pool = ThreadPoolExecutor(max_workers=len(self.entries), thread_name_prefix="rlft-rewards")

    def score(self, step: int, items: list[RewardItem]) -> RewardBatchResult:
        futures = [self._pool.submit(scorer.score, step, items) for _, scorer in self.entries]
        # Wait for every entry (an HTTP call cannot be cancelled from here), then raise the first failure.
        outcomes = [(f.result() if f.exception() is None else f.exception()) for f in futures]
        return self._combine(items, outcomes)

    async def ascore(self, step: int, items: list[RewardItem]) -> RewardBatchResult:
        """``score`` for callers with an event loop (the service's dry run)."""

        async def one(scorer: RewardScorer) -> RewardBatchResult:
            if hasattr(scorer, "ascore"):
                return await scorer.ascore(step, items)
            return await asyncio.to_thread(scorer.score, step, items)

        outcomes = await asyncio.gather(*(one(s) for _, s in self.entries), return_exceptions=True)
        return self._combine(items, list(outcomes))

    def _combine(self, items: list[RewardItem], outcomes: list[Any]) -> RewardBatchResult:
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        out = RewardBatchResult(rewards=[], errors=[], components=[])
        for i in range(len(items)):
            total: float | None = 0.0
            parts: dict[str, float] = {}
            errors: list[str] = []
            for (entry, _), result in zip(self.entries, outcomes, strict=True):
                value = result.rewards[i]
                if entry.truncated_score is not None and items[i].finish_reason == "length":
                    value = entry.truncated_score
                if result.errors[i] is not None:
                    errors.append(f"{entry.name}: {result.errors[i]}")
                if value is None:
                    total = None
                    continue
                parts[entry.name] = value
                for part, number in (result.components[i] or {}).items():
                    parts[f"{entry.name}/{part}"] = number
                if total is not None:
                    total += entry.weight * value
            out.rewards.append(total)
            out.errors.append("; ".join(errors) or None)
            out.components.append(parts)
        for (entry, _), result in zip(self.entries, outcomes, strict=True):
            for name, value in result.metrics.items():
                prefix = "reward_endpoint/"
                key = f"{prefix}{entry.name}/{name[len(prefix) :]}" if name.startswith(prefix) else name
                out.metrics[key] = value
        return out

    def close(self) -> None:
        for _, scorer in self.entries:
            scorer.close()
        self._pool.shutdown(wait=False)

    def __enter__(self) -> CompositeScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
