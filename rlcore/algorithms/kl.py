"""KL-to-reference estimators and the KL coefficient controllers.

Objective: a per-token estimate of ``KL(pi_theta || pi_ref)`` from samples of ``pi_theta``, with
``log_r = ref_logprobs - logprobs`` (Schulman 2020, "Approximating KL Divergence",
http://joschu.net/blog/kl-approx.html):

- ``k1 = -log_r = logprobs - ref_logprobs``: unbiased, high variance, can be negative (used as a per-token
  reward penalty in PPO for LLMs, Ziegler et al. 2019, arXiv:1909.08593).
- ``k2 = 0.5 * log_r ** 2``: biased, low variance, never negative.
- ``k3 = exp(log_r) - log_r - 1``: unbiased, low variance, never negative (the GRPO loss term, Shao et al.
  2024, arXiv:2402.03300, eq. 4).

The adaptive controller is Ziegler et al. 2019, sec. 2.2: ``e = clip(KL / target - 1, -0.2, 0.2)``,
``beta <- beta * (1 + e * n_steps / horizon)``.

Departures:

1. ``log_r`` is clamped to ``[-20, 20]`` before ``exp`` in k3, so one token whose probabilities differ by
   more than ``e^20`` gives a large finite penalty instead of ``inf`` (veRL does the same).
2. The controller refuses a non-finite KL (ValueError) rather than turning its coefficient into ``nan``
   for the rest of the run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any

import torch

from rlcore.algorithms.masking import check_same_shape
from rlcore.algorithms.registry import Registry


class KLEstimator(str, Enum):
    K1 = "k1"
    K2 = "k2"
    K3 = "k3"


_KLFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_KL_ESTIMATORS: Registry[KLEstimator, _KLFn] = Registry(KLEstimator, "KL estimator")
_MAX_LOG_RATIO = 20.0


@_KL_ESTIMATORS.register(KLEstimator.K1)
def _k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return logprobs - ref_logprobs


@_KL_ESTIMATORS.register(KLEstimator.K2)
def _k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logprobs - ref_logprobs) ** 2


@_KL_ESTIMATORS.register(KLEstimator.K3)
def _k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    log_r = (ref_logprobs - logprobs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return torch.exp(log_r) - log_r - 1


def get_kl_estimator(name: str | KLEstimator) -> _KLFn:
    """``fn(logprobs, ref_logprobs) -> (B, T)``; ValueError listing the valid names for an unknown one."""
    return _KL_ESTIMATORS.get(name)


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str | KLEstimator) -> torch.Tensor:
    """Per-token KL estimate ``(B, T)`` of kind ``k1``, ``k2`` or ``k3``; not masked (mask it downstream)."""
    check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    return get_kl_estimator(kind)(logprobs, ref_logprobs)


def _finite(value: Any, name: str) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number (got {value})")
    return value


class KLController:
    """The interface: ``value`` (the coefficient now), ``update``, ``state_dict`` / ``load_state_dict``.

    The state is ``{"value": float}``, JSON-ready for ``trainer_state.json``; either controller loads the
    other's state.
    """

    def __init__(self, kl_coef: float) -> None:
        self._value = _finite(kl_coef, "kl_coef")

    @property
    def value(self) -> float:
        return self._value

    def update(self, current_kl: float, n_steps: int) -> float:
        """Feed the KL measured over the last ``n_steps`` samples; returns the new coefficient."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, float]:
        return {"value": self._value}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._value = _finite(state["value"], "kl controller state 'value'")


class FixedKLController(KLController):
    """A constant coefficient: ``update`` changes nothing."""

    def update(self, current_kl: float, n_steps: int) -> float:
        return self._value


class AdaptiveKLController(KLController):
    """Ziegler et al. 2019's proportional controller steering the measured KL towards ``target``.

    ``n_steps`` in ``update`` is the number of samples (episodes) since the last update, as in the paper and
    TRL: pass the rollout batch size each step.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        super().__init__(init_kl_coef)
        if not target > 0 or not horizon > 0:
            raise ValueError(f"target and horizon must be > 0 (got target={target}, horizon={horizon})")
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        kl = _finite(current_kl, "current_kl")
        proportional_error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self._value *= 1.0 + proportional_error * n_steps / self.horizon
        return self._value


def make_kl_controller(kl_coef: float, target: float | None = None, horizon: int = 10000) -> KLController:
    """Adaptive when a ``target`` is given, fixed otherwise (the job spec's ``kl_target`` semantics)."""
    if target is None:
        return FixedKLController(kl_coef)
    return AdaptiveKLController(kl_coef, target, horizon)
