"""Reward normalisation for PPO: sequence rewards scaled to ``(r - mean) / std`` before GAE.

Objective: the critic regresses returns, and its loss, its clip range (``value_clip``) and the size of its
early errors are all in units of the reward. A reward that is 0.005 on average (a task the policy
cannot do yet) leaves a randomly initialised critic's noise larger than the signal. Scaling rewards to
unit variance puts every task on one scale, as OpenRLHF's ``normalize_reward`` (a running mean/std of the
reward model's outputs) and CleanRL's ``NormalizeReward`` wrapper do; "The N Implementation Details of RLHF
with PPO" (Huang et al. 2024, arXiv:2403.17031) describes the reward whitening of TRL's PPO trainer.

Running moments are combined with the parallel algorithm of Chan, Golub and LeVeque (1979):
``n = n_a + n_b``, ``d = mean_b - mean_a``, ``mean = mean_a + d n_b / n``,
``M2 = M2_a + M2_b + d^2 n_a n_b / n``.

Departures and conventions:

1. The statistics include the batch being normalised (OpenRLHF updates, then normalises), so the very
   first batch is normalised by itself, exactly as ``batch`` does.
2. ``std`` is the population std ``sqrt(M2 / n)`` plus ``eps``: a batch whose rewards are all equal maps
   to 0 instead of ``nan``. The mean is subtracted as well (OpenRLHF); CleanRL's wrapper only divides.
3. Moments are one float64 tensor ``(3,)`` = ``[count, mean, M2]`` so that a checkpoint holds them exactly
   (float64 round-trips through JSON bit for bit) and resume continues the same sequence.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

import torch

from rlcore.algorithms.registry import Registry

EPS = 1e-8


class RewardNorm(str, Enum):
    NONE = "none"
    BATCH = "batch"
    RUNNING = "running"


def empty_moments(device: torch.device | str = "cpu") -> torch.Tensor:
    """No observations yet: ``[count, mean, M2] = [0, 0, 0]``, float64 ``(3,)``."""
    return torch.zeros(3, dtype=torch.float64, device=device)


@torch.no_grad()
def update_moments(moments: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``moments`` ``(3,)`` float64 combined with the observations ``x`` ``(N,)``; returns new ``(3,)``."""
    if moments.shape != (3,):
        raise ValueError(f"moments must be (3,) [count, mean, M2], got {tuple(moments.shape)}")
    x = x.detach().reshape(-1).to(torch.float64)
    if x.numel() == 0:
        return moments.clone()
    n_a, mean_a, m2_a = moments.to(torch.float64).unbind()
    n_b = torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device)
    mean_b = x.mean()
    m2_b = ((x - mean_b) ** 2).sum()
    n = n_a + n_b
    delta = mean_b - mean_a
    return torch.stack([n, mean_a + delta * n_b / n, m2_a + m2_b + delta**2 * n_a * n_b / n])


def moments_std(moments: torch.Tensor) -> torch.Tensor:
    """Population std ``sqrt(M2 / n)`` of ``moments`` ``(3,)``; 0 before any observation. 0-d float64."""
    n, _, m2 = moments.unbind()
    return torch.sqrt(m2 / n.clamp(min=1.0))


def _standardise(scores: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    mean, std = stats[1], moments_std(stats)
    return ((scores.to(torch.float64) - mean) / (std + EPS)).to(scores.dtype)


# A variant maps (observed scores (N,), running moments (3,)) to (the moments to normalise with, or None
# for no normalisation; the running moments after this batch).
StatsFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor | None, torch.Tensor]]
_NORMS: Registry[RewardNorm, StatsFn] = Registry(RewardNorm, "reward normalisation")


@_NORMS.register(RewardNorm.NONE)
def _no_norm(x: torch.Tensor, moments: torch.Tensor) -> tuple[None, torch.Tensor]:
    return None, moments


@_NORMS.register(RewardNorm.BATCH)
def _batch_norm(x: torch.Tensor, moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return update_moments(empty_moments(x.device), x), moments


@_NORMS.register(RewardNorm.RUNNING)
def _running_norm(x: torch.Tensor, moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    moments = update_moments(moments.to(x.device), x)
    return moments, moments


@torch.no_grad()
def normalize_rewards(
    scores: torch.Tensor,
    moments: torch.Tensor,
    mode: str | RewardNorm,
    observed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence rewards ``scores`` ``(B,)`` normalised under ``mode``, and the running ``moments`` ``(3,)``
    after this batch (unchanged unless ``mode`` is ``running``). ``scores`` keep their dtype.

    ``observed`` ``(B,)`` bool: the scores that count in the statistics (a skipped sample's placeholder
    does not); every score is normalised with them."""
    x = scores if observed is None else scores[observed.bool()]
    stats, moments = _NORMS.get(mode)(x, moments)
    return (scores if stats is None else _standardise(scores, stats)), moments
