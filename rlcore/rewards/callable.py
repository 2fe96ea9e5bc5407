"""Rewards computed by a Python function, for library use and ``rlft train --local --reward-fn mod:fn``.

The function is called once per step with whole lists, in the same shape TRL's reward functions use::

    def my_reward(prompts: list[str], completions: list[str], *, labels: list, metadata: list[dict],
                  groups: list[int], **kwargs) -> list[float | None]:
        ...

``labels[i]``, ``metadata[i]`` and ``groups[i]`` belong to ``completions[i]`` (accept ``**kwargs`` so that
fields added later do not break the function). It returns one finite number per completion, or None for
a completion it cannot score: None goes through ``on_error`` like an endpoint's per-item ``error``.
Anything else (an exception, the wrong count, NaN, a string) fails the step with ``RewardInvalid`` and a
message that says what was wrong: a reward that silently became 0 would let training "work" on garbage.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from rlcore.errors import ConfigError, RewardInvalid
from rlcore.rewards.base import (
    OnError,
    RewardBatchResult,
    RewardItem,
    describe_value,
    finite_number,
    latency_metrics,
    resolve_item_error,
)

RewardFn = Callable[..., Sequence[Any]]


class CallableReward:
    """A ``RewardScorer`` around ``fn(prompts, completions, labels=, metadata=, groups=)``."""

    def __init__(self, fn: RewardFn, on_error: OnError = "fail"):
        if not callable(fn):
            raise ConfigError(f"reward function {fn!r} is not callable")
        self.fn = fn
        self.on_error = on_error
        self.name = getattr(fn, "__qualname__", None) or repr(fn)

    def score(self, step: int, items: list[RewardItem]) -> RewardBatchResult:
        started = time.perf_counter()
        values = self._call(items)
        elapsed_ms = (time.perf_counter() - started) * 1000
        rewards: list[float | None] = []
        errors: list[str | None] = []
        for item, value in zip(items, values, strict=True):
            if value is None:
                error = "the reward function returned None"
                rewards.append(
                    resolve_item_error(self.on_error, item.id, error, f"reward function {self.name}")
                )
                errors.append(error)
                continue
            number = finite_number(value)
            if number is None:
                raise RewardInvalid(
                    f"reward function {self.name} returned {describe_value(value)} for item {item.id!r} "
                    f"(step {step}); every reward must be a finite number"
                )
            rewards.append(number)
            errors.append(None)
        n_errors = sum(e is not None for e in errors)
        return RewardBatchResult(
            rewards=rewards,
            errors=errors,
            components=[None] * len(items),
            metrics=latency_metrics([elapsed_ms], errors=n_errors, retries=0, requests=1),
        )

    def _call(self, items: list[RewardItem]) -> list[Any]:
        try:
            out = self.fn(
                [i.prompt for i in items],
                [i.completion for i in items],
                labels=[i.label for i in items],
                metadata=[i.metadata for i in items],
                groups=[i.group for i in items],
                finish_reasons=[i.finish_reason for i in items],
            )
        except Exception as exc:  # the user's code: any failure is a reward failure, reported with its type
            raise RewardInvalid(f"reward function {self.name} raised {type(exc).__name__}: {exc}") from exc
        if hasattr(out, "tolist"):  # numpy arrays and torch tensors
            out = out.tolist()
        if isinstance(out, (str, bytes)) or not isinstance(out, Sequence):
            raise RewardInvalid(
                f"reward function {self.name} returned {type(out).__name__}; it must return a list of "
                f"{len(items)} numbers, one per completion"
            )
        if len(out) != len(items):
            raise RewardInvalid(
                f"reward function {self.name} returned {len(out)} rewards for {len(items)} completions"
            )
        return list(out)

    def close(self) -> None:
        """Nothing to release; present for the ``RewardScorer`` protocol."""


def load_callable(ref: str) -> RewardFn:
    """Import ``"module:function"`` (or ``"package.module:Class.method"``) from the current directory."""
    module_name, sep, attr_path = ref.partition(":")
    if not sep or not module_name or not attr_path:
        raise ConfigError(
            f"--reward-fn {ref!r} must look like module:function (e.g. my_rewards:score for a function "
            "score in my_rewards.py in the current directory)"
        )
    cwd = os.getcwd()
    if cwd not in sys.path:
        # Users run `rlft train --local --reward-fn my_rewards:score` next to my_rewards.py.
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # an import runs the user's module: any failure is reported as such
        raise ConfigError(
            f"cannot import module {module_name!r} for --reward-fn {ref!r} (looked in {cwd} and sys.path): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ConfigError(
                f"--reward-fn {ref!r}: {getattr(obj, '__name__', obj)!r} has no attribute {part!r}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"--reward-fn {ref!r} is a {type(obj).__name__}, not a function")
    return obj
