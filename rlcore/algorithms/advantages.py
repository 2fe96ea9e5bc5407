"""Advantage estimators: GAE for PPO, group-relative for GRPO.

Objectives:

- GAE (Schulman et al. 2015, arXiv:1506.02438, eq. 16):
  ``delta_t = r_t + gamma * V_{t+1} - V_t``, ``A_t = delta_t + gamma * lam * A_{t+1}``, ``returns = A + V``
  (the value target of the PPO critic, as in Schulman et al. 2017, arXiv:1707.06347).
- GRPO outcome advantage (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300, sec. 4.1.2):
  ``A_i = (r_i - mean(r_group)) / std(r_group)``, the same for every token of completion i.

Departures and conventions:

1. Token time runs over completion tokens only: ``response_mask`` ``(B, T)`` may start after prompt or pad
   columns and be followed by padding; ``V_{t+1}`` is the value at the next *completion* position, and the
   value after the last one is 0 (terminal). Masked positions are skipped, so a mask with holes (tool
   output inside a completion) also works; masked outputs are 0.
2. GRPO divides by ``std + 1e-4`` (unbiased std, as ``torch.std``), so a group whose rewards are all equal
   gets advantage 0 instead of ``nan``. ``scale="batch"`` divides by the std of the whole batch instead
   (more robust, Hu et al. 2025, REINFORCE++); ``scale="none"`` only centres (Dr. GRPO, Liu et al. 2025,
   arXiv:2503.20783, which argues the std division biases towards too easy / too hard prompts).
3. Advantages are computed under ``no_grad`` and in float32 whatever the input dtype: they are targets.
4. Through the registry every estimator takes per-token rewards ``(B, T)``; the outcome estimator (GRPO)
   scores a completion by the sum of its token rewards, so a per-token KL penalty folded into the
   reward (``kl_in="reward"``) is counted too.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Protocol

import torch

from rlcore.algorithms.masking import check_same_shape
from rlcore.algorithms.registry import Registry


class AdvantageEstimator(str, Enum):
    GAE = "gae"
    GRPO = "grpo"


class RewardScale(str, Enum):
    GROUP = "group"
    BATCH = "batch"
    NONE = "none"


@torch.no_grad()
def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation. All ``(B, T)``; returns ``(advantages, returns)``, float32."""
    check_same_shape(rewards=rewards, values=values, mask=mask)
    mask = mask.bool()
    zero = torch.zeros((), dtype=torch.float32, device=rewards.device)
    rewards = torch.where(mask, rewards.float(), zero)
    values = torch.where(mask, values.float(), zero)
    advantages = torch.zeros_like(values)
    # Carried from the next completion position to the left; start terminal: V = A = 0.
    next_value = torch.zeros_like(values[:, 0])  # (B,)
    next_adv = torch.zeros_like(values[:, 0])  # (B,)
    for t in reversed(range(values.shape[1])):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * next_adv
        advantages[:, t] = torch.where(m, adv_t, zero)
        next_value = torch.where(m, values[:, t], next_value)
        next_adv = torch.where(m, adv_t, next_adv)
    returns = torch.where(mask, advantages + values, zero)
    return advantages, returns


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``(B*G,)`` → ``(B, G)``, with a clear error when the layout is impossible."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-d (B*G,), got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be at least 2 to compare samples of a group (got {group_size})")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    return rewards.float().view(-1, group_size)


_Divisor = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
# What the centred rewards (B, G) are divided by, given the grouped rewards (B, G) and eps.
_SCALES: Registry[RewardScale, _Divisor] = Registry(RewardScale, "reward scale")
_SCALES.register(RewardScale.GROUP)(lambda grouped, flat, eps: grouped.std(dim=1, keepdim=True) + eps)
_SCALES.register(RewardScale.BATCH)(lambda grouped, flat, eps: flat.std() + eps)
_SCALES.register(RewardScale.NONE)(lambda grouped, flat, eps: torch.ones((), device=flat.device))


@torch.no_grad()
def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: str | RewardScale = "group", eps: float = 1e-4
) -> torch.Tensor:
    """GRPO advantages ``(B*G,)`` from rewards ``(B*G,)`` laid out as consecutive groups of ``group_size``."""
    divisor = _SCALES.get(scale)
    grouped = _grouped(rewards, group_size)  # (B, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    return (centred / divisor(grouped, grouped.flatten(), eps)).flatten()


@torch.no_grad()
def group_reward_stats(rewards: torch.Tensor, group_size: int) -> dict[str, torch.Tensor]:
    """Diagnostics of grouped rewards: ``frac_zero_std_groups`` (groups with no learning signal under
    GRPO) and the mean within-group std. 0-d tensors."""
    grouped = _grouped(rewards, group_size)  # (B, G)
    spread = grouped.max(dim=1).values - grouped.min(dim=1).values
    return {
        "frac_zero_std_groups": (spread == 0).float().mean(),
        "group_std_mean": grouped.std(dim=1).mean(),
    }


class AdvantageFn(Protocol):
    """One signature for every registered estimator: token rewards and mask ``(B, T)`` →
    ``(advantages, returns)``, both ``(B, T)`` and 0 under the mask.

    Estimators ignore the arguments they do not use.
    """

    def __call__(
        self,
        token_rewards: torch.Tensor,
        response_mask: torch.Tensor,
        *,
        values: torch.Tensor | None = None,
        gamma: float = 1.0,
        lam: float = 1.0,
        group_size: int = 1,
        scale: str = "group",
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


_ADVANTAGE_ESTIMATORS: Registry[AdvantageEstimator, AdvantageFn] = Registry(
    AdvantageEstimator, "advantage estimator"
)


def register_adv_est(name: str | AdvantageEstimator) -> Callable[[AdvantageFn], AdvantageFn]:
    """Decorator adding an estimator (a member of ``AdvantageEstimator``) to the registry."""
    return _ADVANTAGE_ESTIMATORS.register(name)


def get_advantage_estimator(name: str | AdvantageEstimator) -> AdvantageFn:
    """The estimator registered under ``name``; ValueError listing the valid names otherwise."""
    return _ADVANTAGE_ESTIMATORS.get(name)


@register_adv_est(AdvantageEstimator.GAE)
def _gae_estimator(
    token_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    values: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
    group_size: int = 1,
    scale: str = "group",
) -> tuple[torch.Tensor, torch.Tensor]:
    if values is None:
        raise ValueError("the gae advantage estimator needs values (B, T) from a value model")
    return gae(token_rewards, values, response_mask, gamma, lam)


def _broadcast_outcome(
    seq_advantages: torch.Tensor, response_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B,)`` → ``(B, T)`` over the completion tokens.

    The returns of an outcome estimator are its advantages (there is no critic to train).
    """
    token_adv = seq_advantages[:, None] * response_mask.bool()  # (B, T)
    return token_adv, token_adv


def _sequence_scores(token_rewards: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    check_same_shape(token_rewards=token_rewards, response_mask=response_mask)
    mask = response_mask.bool()
    return torch.where(mask, token_rewards.float(), torch.zeros((), device=mask.device)).sum(dim=-1)  # (B,)


@register_adv_est(AdvantageEstimator.GRPO)
def _grpo_estimator(
    token_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    values: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
    group_size: int = 1,
    scale: str = "group",
) -> tuple[torch.Tensor, torch.Tensor]:
    scores = _sequence_scores(token_rewards, response_mask)
    return _broadcast_outcome(group_advantages(scores, group_size, scale), response_mask)
