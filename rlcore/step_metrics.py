"""The metrics of one training step, reduced over every rank: rewards, completions, the updates' averages,
KL, timings, throughput and memory. Names are namespaced (``reward/mean``, ``loss/policy``, ``time/step_s``).
"""

from __future__ import annotations

import resource

import torch

from rlcore import algorithms as alg
from rlcore.critic import value_metrics


def step_metrics(
    acc,
    batch,
    train: dict[str, float],
    reward: dict[str, float],
    *,
    group_size: int,
    is_ppo: bool,
    kl_coef: float,
) -> dict[str, float]:
    """Reward and completion statistics over the whole rollout (every rank's samples), the updates'
    averages ``train`` (averaged over ranks too), the rollout's KL and the reward source's ``reward``."""
    scores = acc.gather(batch.scores.float())
    lengths = acc.gather(batch.rollout.response_mask.sum(dim=1).float())
    truncated = acc.gather(batch.rollout.truncated.float())
    m: dict[str, float] = {
        "reward/mean": scores.mean().item(),
        "reward/std": scores.std().item() if len(scores) > 1 else 0.0,
        "reward/min": scores.min().item(),
        "reward/max": scores.max().item(),
        "completion/length_mean": lengths.mean().item(),
        "completion/clipped_ratio": truncated.mean().item(),
        "kl/coef": float(kl_coef),
    }
    if not is_ppo:
        std = scores.view(-1, group_size).std(dim=1)
        m["reward/frac_zero_std_groups"] = (std < 1e-6).float().mean().item()
    else:
        m.update(value_metrics(batch.old_values, batch.returns, batch.mask))
    m.update(mean_over_ranks(acc, train))
    if batch.kl is not None:  # the rollout's KL, not the updates' (they drift over epochs)
        m["kl/mean"] = acc.reduce(alg.masked_mean(batch.kl, batch.mask), reduction="mean").item()
    m.update(reward)
    return m


def mean_over_ranks(acc, metrics: dict[str, float]) -> dict[str, float]:
    """Each rank's numbers averaged over the ranks (the same on every rank afterwards)."""
    if acc.num_processes == 1:
        return dict(metrics)
    return {
        k: float(acc.reduce(torch.tensor(v, device=acc.device), reduction="mean").item())
        for k, v in metrics.items()
    }


def timing_metrics(acc, batch, t_generate: float, t_reward: float, t_train: float) -> dict[str, float]:
    """Seconds per phase, tokens per second over every rank's completions, peak memory of this process."""
    n_tokens = float(acc.reduce(batch.rollout.response_mask.sum().float(), reduction="sum").item())
    total = t_generate + t_reward + t_train
    return {
        "time/generate_s": t_generate,
        "time/reward_s": t_reward,
        "time/train_s": t_train,
        "time/step_s": total,
        "throughput/tokens_per_s": n_tokens / max(total, 1e-9),
        "memory/peak_bytes": float(peak_memory()),
    }


def peak_memory() -> int:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
