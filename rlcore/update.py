"""What one update consumes and the pieces of its loss: the prepared ``Batch`` of a rollout, the policy's
loss terms (PPO-clip, entropy bonus, KL in the loss) and the clipped optimizer step. The trainer's update
loop (epochs × minibatches × micro-batches) calls these; the math itself lives in ``rlcore.algorithms``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from rlcore import algorithms as alg
from rlcore.errors import TrainingDiverged
from rlcore.rollout import Rollout
from rlcore.spec import Hyperparameters, JobSpec


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


@dataclass(frozen=True)
class BatchSizes:
    """Samples per optimizer step and per forward on one rank, and optimizer steps per pass."""

    minibatch_size: int
    micro_batch_size: int
    num_minibatches: int

    @classmethod
    def of(cls, spec: JobSpec, world: int) -> BatchSizes:
        hp, local = spec.hyperparameters, spec.rollout_batch_size // world
        minibatch = min(local, (hp.minibatch_size or spec.rollout_batch_size) // world or 1)
        micro = min(minibatch, hp.micro_batch_size or minibatch)
        return cls(minibatch, micro, max(1, local // minibatch))


def _no_sync(acc, model):
    """No gradient all-reduce (DDP) or reduce-scatter (FSDP) in this backward."""
    from rlcore.distributed import fsdp_roots, no_gradient_sync

    roots = fsdp_roots(model)
    return no_gradient_sync(roots) if roots else acc.no_sync(model)


def micro_slices(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class Updater:
    """Epochs x minibatches x micro-batches over a prepared ``Batch``: gradient accumulation weighted by each
    micro-batch's share of the minibatch (exact for every ``loss_agg``), one all-reduce per minibatch under
    data parallelism, one clipped optimizer step per minibatch."""

    def __init__(
        self, acc, policy, value, optimizer, scheduler, hp: Hyperparameters, sizes: BatchSizes, forward
    ):
        self.acc, self.policy, self.value = acc, policy, value
        self.optimizer, self.scheduler = optimizer, scheduler
        self.hp, self.sizes, self._forward = hp, sizes, forward

    def update(self, batch: Batch, step: int, kl_coef: float) -> dict[str, float]:
        """``epochs_per_rollout`` passes of minibatch steps over ``batch`` before update ``step + 1``; the
        metrics averaged over the minibatch steps."""
        hp, B = self.hp, batch.mask.shape[0]
        sums: dict[str, float] = {}
        count = 0
        self.policy.train()
        for _ in range(hp.epochs_per_rollout):
            order = torch.randperm(B) if self.sizes.num_minibatches > 1 else torch.arange(B)
            for start in range(0, B, self.sizes.minibatch_size):
                idx = order[start : start + self.sizes.minibatch_size].to(self.acc.device)
                for k, v in self._minibatch_step(batch, idx, step, kl_coef).items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
        return {k: v / count for k, v in sums.items()}

    def _minibatch_step(self, batch: Batch, idx: torch.Tensor, step: int, kl_coef: float) -> dict[str, float]:
        hp = self.hp
        mb_tokens = batch.mask[idx].sum().clamp(min=1)
        slices = micro_slices(len(idx), self.sizes.micro_batch_size)
        metrics: dict[str, float] = {}
        for i, s in enumerate(slices):
            micro = idx[s]
            weight = (
                batch.mask[micro].sum() / mb_tokens
                if hp.loss_agg == "token_mean"
                else torch.tensor(len(micro) / len(idx))
            )
            with contextlib.ExitStack() as no_sync:
                if (
                    i < len(slices) - 1 and self.acc.num_processes > 1
                ):  # gradients are all-reduced once, at the last
                    for model in (self.policy, self.value):
                        if model is not None:
                            no_sync.enter_context(_no_sync(self.acc, model))
                loss, m = self._micro_loss(batch, micro, step, kl_coef)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"the loss is {loss.item()} at step {step + 1}: lower "
                        "hyperparameters.learning_rate or check the rewards"
                    )
                self.acc.backward(loss * weight)
            for k, v in m.items():
                metrics[k] = metrics.get(k, 0.0) + float(v) * float(weight)
        norms = clip_and_step(self.acc, self.optimizer, self.scheduler, hp.max_grad_norm, step=step + 1)
        metrics.update(zip(("optim/grad_norm", "optim/value_grad_norm"), norms, strict=False))
        metrics["optim/lr"] = self.scheduler.get_last_lr()[0]
        return metrics

    def _micro_loss(self, batch: Batch, micro: torch.Tensor, step: int, kl_coef: float):
        hp = self.hp
        mask = batch.mask[micro]
        warmup = step < hp.critic_warmup_steps  # value-only updates: the policy does not move
        asked = dict(
            logprobs=not warmup, entropy=True, entropy_grad=hp.entropy_coef > 0, policy_grad=not warmup
        )
        out, values = self._forward(self.policy, self.value, batch.rollout, micro, **asked)
        loss, metrics = torch.zeros((), device=mask.device), {}
        if not warmup:
            loss, metrics = policy_loss(
                batch, micro, out.logprobs.float(), out.entropy, self.hp, kl_coef=kl_coef
            )
        if values is not None:
            v_loss, vm = alg.value_loss(
                values, batch.old_values[micro], batch.returns[micro], mask, hp.value_clip, agg=hp.loss_agg
            )
            loss = loss + hp.vf_coef * v_loss
            metrics["loss/value"] = v_loss.detach()
            metrics["value/clipfrac"] = vm["vf_clipfrac"]
        metrics["loss/total"] = loss.detach()
        return loss, metrics
