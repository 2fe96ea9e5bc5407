"""Clipped policy loss (PPO / GRPO), clipped value loss (PPO critic) and the entropy bonus.

Objective: PPO's clipped surrogate (Schulman et al. 2017, arXiv:1707.06347, eq. 7), to be *maximised*,

    L_clip = E_t[ min(r_t * A_t, clip(r_t, 1 - eps_low, 1 + eps_high) * A_t) ]
    r_t = exp(logp_t - old_logp_t)

per completion token as in GRPO (Shao et al. 2024, arXiv:2402.03300, eq. 3), and the value loss of PPO
implementations (OpenAI baselines ppo2, CleanRL):
``0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)``.

Departures:

1. We return the loss to *minimise*: per token ``max(-r * A, -clip(r) * A)`` = ``-min(...)``.
2. Asymmetric clip range ``clip_low`` / ``clip_high`` ("clip-higher", DAPO, Yu et al. 2025,
   arXiv:2503.14476); equal values give the paper's single epsilon.
3. The reduction over tokens is chosen with ``agg`` (``masking.aggregate``): the paper's ``E_t`` is
   ``token_mean``; GRPO's eq. 3 is ``seq_mean_token_mean``; Dr. GRPO's is ``seq_mean_token_sum_norm``.
4. ``logp - old_logp`` is clamped to ``[-20, 20]`` before ``exp`` so that a stray token cannot make the
   ratio ``inf`` (veRL does the same); the gradient through a clamped token is 0, as the clip would give.
5. Masked positions are replaced by 0 before any arithmetic, so values under the mask change neither the
   loss nor any gradient (a ``nan`` there stays out of the backward pass too).
6. ``approx_kl`` is the k3 estimate of ``KL(pi_old || pi_theta)`` on the old policy's samples,
   ``(r - 1) - log r`` (Schulman's blog; CleanRL's ``approx_kl``): non-negative and unbiased.
"""

from __future__ import annotations

import torch

from rlcore.algorithms.masking import aggregate, check_same_shape, masked_mean

_MAX_LOG_RATIO = 20.0


def _zero_masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _token_advantages(advantages: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Per-token advantages ``(B, T)`` from ``(B, T)`` or per-sequence ``(B,)``."""
    if advantages.dim() == 1 and advantages.shape[0] == shape[0]:
        return advantages[:, None].expand(shape)
    if advantages.shape != shape:
        raise ValueError(f"advantages must be (B, T) {tuple(shape)} or (B,), got {tuple(advantages.shape)}")
    return advantages


def ppo_clip_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
    agg: str = "token_mean",
    *,
    norm: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate loss over ``mask`` ``(B, T)``; ``advantages`` ``(B, T)`` or ``(B,)``.

    ``norm`` goes to ``aggregate`` (Dr. GRPO's constant). Metrics (detached,
    0-d, masked means): ``clipfrac`` (tokens where the clipped branch is taken) = ``clipfrac_low`` (A < 0,
    r < 1 - clip_low) + ``clipfrac_high`` (A > 0, r > 1 + clip_high); ``approx_kl`` (k3, see docstring);
    ``ratio_mean``, ``ratio_max``.
    """
    check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, mask=mask)
    if not (0 < clip_low < 1 and clip_high > 0):
        raise ValueError(f"need 0 < clip_low < 1 and clip_high > 0 (got {clip_low}, {clip_high})")
    mask = mask.bool()
    adv = _zero_masked(_token_advantages(advantages, logprobs.shape), mask)  # (B, T)
    log_ratio = _zero_masked(logprobs, mask) - _zero_masked(old_logprobs, mask)
    log_ratio = log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)  # (B, T); exactly 1 under the mask
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - clip_low, 1 + clip_high)
    loss = aggregate(torch.maximum(unclipped, clipped), mask, agg, norm)
    with torch.no_grad():
        metrics = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "clipfrac_low": masked_mean(((ratio < 1 - clip_low) & (adv < 0)).float(), mask),
            "clipfrac_high": masked_mean(((ratio > 1 + clip_high) & (adv > 0)).float(), mask),
            "approx_kl": masked_mean((ratio - 1) - log_ratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": _zero_masked(ratio, mask).max(),  # ratios are > 0, so masked zeros never win
        }
    return loss, {k: v.detach() for k, v in metrics.items()}


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None,
    agg: str = "token_mean",
    *,
    norm: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss over ``mask``, all ``(B, T)``; ``clip=None`` means unclipped.

    Metrics (detached, 0-d): ``vf_clipfrac`` (tokens where the clipped error is the larger), ``value_mean``.
    """
    check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    if clip is not None and not clip > 0:
        raise ValueError(f"value clip must be > 0 or None (got {clip})")
    mask = mask.bool()
    values = _zero_masked(values, mask)
    returns = _zero_masked(returns, mask)
    unclipped = (values - returns) ** 2
    larger = unclipped
    clipped_taken = torch.zeros_like(mask)
    if clip is not None:
        old_values = _zero_masked(old_values, mask)
        values_clipped = old_values + (values - old_values).clamp(-clip, clip)
        clipped = (values_clipped - returns) ** 2
        larger = torch.maximum(unclipped, clipped)
        clipped_taken = clipped > unclipped
    loss = aggregate(0.5 * larger, mask, agg, norm)
    with torch.no_grad():
        metrics = {
            "vf_clipfrac": masked_mean(clipped_taken.float(), mask),
            "value_mean": masked_mean(values, mask),
        }
    return loss, {k: v.detach() for k, v in metrics.items()}


def entropy_bonus(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    coef: float,
    agg: str = "token_mean",
    *,
    norm: float | None = None,
) -> torch.Tensor:
    """The entropy term to *add* to the loss: ``-coef * aggregate(entropy)``, entropy and mask ``(B, T)``.

    CleanRL's ``loss = pg_loss - ent_coef * entropy_loss``: minimising it raises the policy's entropy.
    Aggregated like the policy loss (same ``agg``), so the two stay on one scale. 0-d.
    """
    check_same_shape(entropy=entropy, mask=mask)
    if not coef >= 0:
        raise ValueError(f"entropy coefficient must be >= 0 (got {coef})")
    mask = mask.bool()
    mean = aggregate(_zero_masked(entropy, mask), mask, agg, norm)
    return -coef * mean
