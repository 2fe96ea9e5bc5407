"""The optimizer (AdamW; the value model in its own parameter group) and the learning-rate schedule."""

from __future__ import annotations

import math

import torch

from rlcore.spec import Hyperparameters


def make_optimizer(policy: torch.nn.Module, value: torch.nn.Module | None, hp: Hyperparameters):
    groups = [{"params": [p for p in policy.parameters() if p.requires_grad], "lr": hp.learning_rate}]
    if value is not None:
        # Only the critic's own trainable tensors: a LoRA critic's frozen base weights are the policy's.
        params = [p for p in value.parameters() if p.requires_grad]
        groups.append({"params": params, "lr": hp.value_learning_rate or hp.learning_rate})
    return torch.optim.AdamW(groups, weight_decay=hp.weight_decay)


def lr_factor(i: int, schedule: str, warmup: int, total: int) -> float:
    """Multiplier of the peak learning rate at optimizer step ``i``: linear warmup, then the schedule."""
    if warmup and i < warmup:
        return (i + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (i - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer, hp: Hyperparameters, total_steps: int):
    """``total_steps`` counts optimizer steps: steps x epochs_per_rollout x minibatches."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: lr_factor(i, hp.lr_schedule, hp.warmup_steps, total_steps)
    )
