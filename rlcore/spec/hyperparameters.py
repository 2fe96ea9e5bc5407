"""``hyperparameters`` (the algorithm's knobs, each documented where declared) and ``resources``."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from rlcore.spec.base import (
    MAX_SEED,
    QUEUE_PATTERN,
    _Frozen,
)


class Hyperparameters(_Frozen):
    steps: int = Field(100, ge=1, le=1_000_000, description="Rollout/update steps to run.")
    prompts_per_step: int = Field(4, ge=1, le=65536, description="Prompts sampled per step.")
    group_size: int = Field(
        8, ge=1, le=1024, description="Completions per prompt (GRPO needs >= 2; PPO usually 1)."
    )
    max_new_tokens: int = Field(64, ge=1, le=65536, description="Completion length cap.")
    max_prompt_tokens: int = Field(512, ge=1, le=131072, description="Prompts are left-truncated to this.")
    temperature: float = Field(1.0, gt=0, le=10, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling.")
    learning_rate: float = Field(1e-6, gt=0, le=1, description="Peak learning rate of the policy (AdamW).")
    value_learning_rate: float | None = Field(
        None, gt=0, le=1, description="PPO: learning rate of the value model (default: learning_rate)."
    )
    weight_decay: float = Field(0.0, ge=0, le=1)
    lr_schedule: Literal["constant", "linear", "cosine"] = Field("constant")
    warmup_steps: int = Field(0, ge=0, le=1_000_000, description="Linear warmup, in optimizer steps.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping (None: off).")
    epochs_per_rollout: int | None = Field(
        None,
        ge=1,
        le=100,
        description=(
            "Passes over each rollout batch. Default: ppo 4 (CleanRL, TRL's PPO: old log-probs are taken "
            "before the first pass, so later passes move the ratio off 1 and clipping acts), grpo 1 (single "
            "pass, as DeepSeekMath and TRL's GRPO)."
        ),
    )
    minibatch_size: int | None = Field(
        None,
        ge=1,
        le=2**26,
        description=(
            "Samples per optimizer step (default: the whole rollout batch, TRL's num_mini_batches=1: with "
            "ppo's 4 epochs, 4 optimizer steps per rollout; 4 minibatches, as CleanRL, collapsed more often "
            "on small batches, see BENCHMARKS.md)."
        ),
    )
    micro_batch_size: int | None = Field(
        None,
        ge=1,
        le=2**26,
        description="Samples per forward/backward (gradient accumulation); default: minibatch.",
    )
    clip_low: float = Field(0.2, gt=0, lt=1, description="Ratio clip below 1 (epsilon).")
    clip_high: float = Field(0.2, gt=0, le=10, description="Ratio clip above 1 (clip-higher: e.g. 0.28).")
    kl_coef: float = Field(0.0, ge=0, description="KL-to-reference coefficient; 0 loads no reference model.")
    kl_estimator: Literal["k1", "k2", "k3"] | None = Field(
        None, description="KL estimator; default k1 in the reward, k3 in the loss."
    )
    kl_in: Literal["reward", "loss"] | None = Field(
        None, description="Where KL acts: PPO default 'reward' (per-token penalty), GRPO 'loss'."
    )
    kl_target: float | None = Field(
        None, gt=0, description="With kl_in='reward': adaptive KL controller target (None: fixed kl_coef)."
    )
    kl_horizon: int = Field(10000, ge=1, le=10**9, description="Adaptive KL controller horizon.")
    gamma: float = Field(1.0, ge=0, le=1, description="PPO discount.")
    lam: float = Field(0.95, ge=0, le=1, description="PPO GAE lambda.")
    vf_coef: float = Field(0.1, ge=0, description="PPO value loss coefficient.")
    value_clip: float | None = Field(
        0.2,
        gt=0,
        description=(
            "PPO value clipping range, in units of the (normalised) reward (None: off). It acts from the "
            "second minibatch of a rollout on, once the critic has moved away from the rollout's values."
        ),
    )
    whiten_advantages: bool | None = Field(
        None,
        description=(
            "PPO: whiten advantages over the batch. Default: on when reward_norm is 'none', off otherwise: "
            "normalised rewards already give advantages unit scale, and whitening a batch whose rewards "
            "barely differ (a task not found yet, or one solved) blows the critic's noise up to unit size."
        ),
    )
    scale_rewards: Literal["group", "batch", "none"] = Field("group", description="GRPO advantage scaling.")
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = Field("token_mean")
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Seeds sampling, initialisation and data order (< 2**31)."
    )
    checkpoint_every: int = Field(
        50, ge=0, le=1_000_000, description="Checkpoint every N steps (0: only at the end)."
    )
    keep_checkpoints: int = Field(3, ge=1, le=1000, description="Checkpoints kept on disk (newest).")
    logprob_chunk_size: int = Field(
        1024,
        ge=1,
        le=2**20,
        description="Tokens per chunk in the memory-light log-softmax over the vocabulary.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description=(
            "Recompute each decoder layer's activations in the backward pass instead of keeping them "
            "(Hugging Face's gradient_checkpointing_enable): less activation memory for about one more "
            "forward per update; generation is unaffected."
        ),
    )
    samples_per_step: int = Field(16, ge=0, le=4096, description="Per-sample records reported each step.")
    # PPO at its defaults without hand-tuning: reward normalisation, critic warm-up, entropy bonus, ...
    reward_norm: Literal["none", "batch", "running"] | None = Field(
        None,
        description=(
            "PPO: scale sequence rewards before GAE to (r - mean) / std, with the statistics of this batch "
            "('batch') or of every batch so far ('running', kept in the checkpoint; OpenRLHF's "
            "normalize_reward). Default: ppo 'running', so the critic's targets have unit scale whatever "
            "the reward's; grpo 'none' (its advantages are scaled per group, see scale_rewards)."
        ),
    )
    critic_warmup_steps: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description=(
            "PPO: the first N steps update the critic only (the policy does not move), so that its values "
            "fit the returns before they shape advantages (OpenRLHF's freezing_actor_steps)."
        ),
    )
    entropy_coef: float = Field(
        0.0,
        ge=0,
        le=1,
        description=(
            "Entropy bonus: the loss subtracts entropy_coef x the mean token entropy (CleanRL's ent_coef). "
            "0 keeps the entropy a metric only."
        ),
    )
    value_model: Literal["separate", "shared"] | None = Field(
        None,
        description=(
            "PPO's critic: 'separate' (its own backbone, or with LoRA its own adapters on the policy's "
            "frozen base weights, plus a head) or 'shared' (a head on the policy's backbone: one backbone, "
            "one forward: none of a second backbone's memory). Default for ppo: 'separate'."
        ),
    )


class ResourcesSpec(_Frozen):
    gpus: int = Field(
        1,
        ge=0,
        le=64,
        description="GPUs for this job; >1 runs one rank per GPU under `accelerate launch` "
        "(the service caps it with RLFT_MAX_GPUS_PER_JOB).",
    )
    queue: str | None = Field(None, description="Celery queue (default: 'gpu', or 'cpu' when gpus is 0).")
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="How ranks share the work: 'ddp' (every rank holds the whole model) or 'fsdp' (torch's "
        "FSDP2: each rank holds 1/N of the weights, gradients and optimizer state; needs gpus >= 2).",
    )

    @field_validator("queue")
    @classmethod
    def _queue_name(cls, queue: str | None) -> str | None:
        if queue is not None and not re.fullmatch(QUEUE_PATTERN, queue):
            raise ValueError(
                "resources.queue is a queue name: 1-100 letters, digits, '_', '.', ':' or '-', "
                "starting with a letter or digit"
            )
        return queue

    @model_validator(mode="after")
    def _fsdp_needs_ranks(self) -> ResourcesSpec:
        if self.strategy == "fsdp" and self.gpus < 2:
            raise ValueError(
                f"resources.strategy 'fsdp' shards the model over ranks and resources.gpus is {self.gpus}: "
                "ask for gpus >= 2 (one rank per GPU, or per CPU process on a CPU worker) or use 'ddp'"
            )
        return self
