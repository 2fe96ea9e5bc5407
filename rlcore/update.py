"""What one update consumes and the pieces of its loss: the prepared ``Batch`` of a rollout, the policy's
loss terms (PPO-clip, entropy bonus, KL in the loss) and the clipped optimizer step. The trainer's update
loop (epochs × minibatches × micro-batches) calls these; the math itself lives in ``rlcore.algorithms``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rlcore import algorithms as alg
from rlcore.errors import TrainingDiverged
from rlcore.rollout import Rollout
from rlcore.spec import Hyperparameters


@dataclass
class Batch:
    """One rollout ready for updates. All tensors are (B, T) unless noted."""

    rollout: Rollout
    scores: torch.Tensor  # (B,) sequence rewards
    advantages: torch.Tensor
    old_logprobs: torch.Tensor | None  # None: use the detached current ones (ratio exactly 1)
    ref_logprobs: torch.Tensor | None
    old_values: torch.Tensor | None
    returns: torch.Tensor | None
    mask: torch.Tensor  # response mask with skipped samples zeroed
    kl: torch.Tensor | None = None  # KL to the reference at rollout time, when it penalises the reward


def policy_loss(
    batch: Batch,
    micro: torch.Tensor,
    logprobs: torch.Tensor,
    entropy: torch.Tensor,
    hp: Hyperparameters,
    *,
    kl_coef: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The policy's loss on the rows ``micro`` of ``batch``: PPO-clip, the entropy bonus and (with
    ``kl_in="loss"``) the KL to the reference; ``logprobs``, ``entropy`` (len(micro), T) of the policy."""
    mask = batch.mask[micro]
    old = batch.old_logprobs[micro] if batch.old_logprobs is not None else logprobs.detach()
    loss, pm = alg.ppo_clip_loss(
        logprobs, old, batch.advantages[micro], mask, hp.clip_low, hp.clip_high, agg=hp.loss_agg
    )
    metrics = {
        "loss/policy": loss.detach(),
        "policy/clipfrac": pm["clipfrac"],
        "policy/approx_kl": pm["approx_kl"],
        "policy/entropy": alg.masked_mean(entropy.detach(), mask),
    }
    if hp.entropy_coef > 0:
        bonus = alg.entropy_bonus(entropy, mask, hp.entropy_coef, agg=hp.loss_agg)
        loss = loss + bonus
        metrics["loss/entropy"] = bonus.detach()
    if batch.ref_logprobs is not None:
        kl = alg.kl_estimate(logprobs, batch.ref_logprobs[micro], hp.kl_estimator)
        metrics["kl/mean"] = alg.masked_mean(kl.detach(), mask)
        if hp.kl_in == "loss":
            kl_loss = alg.aggregate(kl, mask, hp.loss_agg)
            loss = loss + kl_coef * kl_loss
            metrics["loss/kl"] = kl_loss.detach()
    return loss, metrics


def clip_and_step(acc, optimizer, scheduler, max_grad_norm: float | None, *, step: int) -> list[float]:
    """Clip each parameter group (the policy; the critic) to ``max_grad_norm`` on its own, so that a
    large value loss cannot use up the policy's step; step. The groups' gradient norms."""
    norms = []
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:  # the policy during critic warm-up
            norms.append(0.0)
        elif max_grad_norm is not None:
            norms.append(float(acc.clip_grad_norm_(params, max_grad_norm)))
        else:
            norms.append(float(torch.norm(torch.stack([p.grad.norm() for p in params]))))
    if not all(math.isfinite(n) for n in norms):
        raise TrainingDiverged(
            f"the gradient norm is {max(norms)} at step {step}: lower "
            "hyperparameters.learning_rate or check the rewards"
        )
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return norms
