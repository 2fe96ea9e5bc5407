"""Held-out evaluation (``evaluation``), the choice and retention of checkpoints (``checkpoints``) and early
stopping (``early_stop``). Which metric names a job produces, and so which ones these may name, is
``rlcore.metrics.produces_metric``; ``JobSpec`` checks them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rlcore.spec.base import _Frozen
from rlcore.spec.dataset import DatasetSpec

MAX_EVAL_SAMPLES_PER_PROMPT = 64


class EvaluationSpec(_Frozen):
    """Prompts the policy never trains on, scored with the job's own reward before the first update (step 0,
    the baseline), every ``every_steps`` steps and at the last step."""

    dataset: DatasetSpec = Field(
        description="The held-out prompts: rows, file_id or path, as the training dataset (same row shape)."
    )
    every_steps: int = Field(10, ge=1, le=1_000_000, description="Evaluate every N training steps.")
    samples_per_prompt: int = Field(
        1,
        ge=1,
        le=MAX_EVAL_SAMPLES_PER_PROMPT,
        description="Completions per prompt (k); with k > 1 the metrics add eval/pass@k and eval/mean@k.",
    )
    temperature: float = Field(
        0.0, ge=0, le=10, description="Sampling temperature of the evaluation; 0 is greedy decoding."
    )
    max_new_tokens: int | None = Field(
        None, ge=1, le=65536, description="Completion length cap (default: hyperparameters.max_new_tokens)."
    )
    max_prompts: int | None = Field(
        None, ge=1, le=1_000_000, description="Evaluate only the first N prompts of the dataset."
    )
    pass_threshold: float = Field(
        1.0, description="A completion passes (eval/pass@k, eval/mean@k) when its reward is at least this."
    )


class CheckpointPolicy(_Frozen):
    """Which checkpoint is the best, and which ones the service keeps in its artifact store.

    ``hyperparameters.checkpoint_every`` stays the cadence (and with ``evaluation`` every evaluated step is
    checkpointed too); ``hyperparameters.keep_checkpoints`` stays the number kept on the worker's disk."""

    best_metric: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="The metric that ranks checkpoints (default: eval/reward/mean with evaluation, else "
        "reward/mean).",
    )
    best_mode: Literal["max", "min"] = Field(
        "max", description="Whether a higher or a lower value is better."
    )
    keep_last: int | None = Field(
        None, ge=1, le=100_000, description="Keep the newest N checkpoints (default: keep every checkpoint)."
    )
    keep_best: int = Field(1, ge=0, le=100_000, description="Keep the best N checkpoints by best_metric.")


class EarlyStopSpec(_Frozen):
    """End the job (``succeeded``) once ``metric`` has not improved by more than ``min_delta`` for
    ``patience`` evaluations (an ``eval/`` metric) or steps (a training metric)."""

    metric: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="The metric watched (default: eval/reward/mean with evaluation, else reward/mean).",
    )
    mode: Literal["max", "min"] = Field("max", description="Whether a higher or a lower value is better.")
    patience: int = Field(
        ge=1,
        le=1_000_000,
        description="Evaluations (eval/ metrics) or steps (training metrics) without improvement before "
        "stopping.",
    )
    min_delta: float = Field(0.0, ge=0, description="An improvement smaller than this does not count.")
