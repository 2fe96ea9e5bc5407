"""The job spec: one pydantic model, defined once.

The engine consumes it, the service validates submitted jobs with it, the worker starts the engine with it.
Every field is documented where it is declared; validation messages say what to change. The spec is frozen:
nothing mutates it at run time. Defaults that depend on the algorithm (``kl_in``, ``kl_estimator``) are
resolved once, at validation.
"""

from __future__ import annotations

import enum
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator


class Algorithm(str, enum.Enum):
    GRPO = "grpo"
    PPO = "ppo"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)


class LoraSpec(_Frozen):
    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA branch.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or 'all-linear'."
    )


class ModelSpec(_Frozen):
    name_or_path: str = Field(..., min_length=1, description="A hub id or a local Hugging Face directory.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype; 'auto' is bfloat16 on a GPU that supports it, else float32."
    )
    lora: LoraSpec | None = Field(None, description="Train LoRA adapters instead of all weights.")
    value_name_or_path: str | None = Field(
        None, description="PPO only: where to initialise the value model from (default: the policy)."
    )
    merge_lora_on_save: bool = Field(False, description="With LoRA, also save a merged model at the end.")


class DatasetSpec(_Frozen):
    """Exactly one of ``rows``, ``file_id`` or ``path``.

    A row is ``{"prompt": str, "label": any, "metadata": {...}}`` or ``{"messages": [...]}`` (rendered with
    the tokenizer's chat template).
    """

    rows: list[dict[str, Any]] | None = Field(None, description="Inline rows.")
    file_id: str | None = Field(None, description="A JSONL file uploaded through POST /v1/files.")
    path: str | None = Field(
        None, description="A local JSONL file (local runs and workers with shared disk)."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> DatasetSpec:
        given = [k for k in ("rows", "file_id", "path") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of dataset.rows, dataset.file_id or dataset.path"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.rows is not None:
            if not self.rows:
                raise ValueError("dataset.rows is empty: give at least one row")
            for i, row in enumerate(self.rows):
                validate_row(row, where=f"dataset.rows[{i}]")
        return self


def validate_row(row: Any, where: str) -> None:
    """Raise ValueError with the row's location unless it is a usable dataset row."""
    if not isinstance(row, dict):
        raise ValueError(f"{where} must be an object with a 'prompt' or 'messages' field")
    if "prompt" in row:
        if not isinstance(row["prompt"], str) or not row["prompt"]:
            raise ValueError(f"{where}.prompt must be a non-empty string")
    elif "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise ValueError(f"{where}.messages must be a non-empty list of {{role, content}} objects")
        for j, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
                raise ValueError(f"{where}.messages[{j}] must be an object with 'role' and 'content'")
    else:
        raise ValueError(f"{where} needs a 'prompt' (string) or 'messages' (chat list) field")
    if "metadata" in row and not isinstance(row["metadata"], dict):
        raise ValueError(f"{where}.metadata must be an object")


class RewardSpec(_Frozen):
    url: str | None = Field(
        None,
        description="The reward endpoint (POST). Required by the service; a local run may pass a callable.",
    )
    protocol: Literal["rlft.reward.v1", "openrlhf"] = Field(
        "rlft.reward.v1", description="Wire format: this project's batched protocol, or OpenRLHF's remote RM."
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Headers sent with every request (e.g. Authorization). Write-only: never returned.",
        json_schema_extra={"writeOnly": True},
    )
    timeout_s: float = Field(30.0, gt=0, le=3600, description="Timeout of one HTTP request.")
    max_retries: int = Field(4, ge=0, le=20, description="Retries on connection errors, timeouts, 429, 5xx.")
    batch_size: int = Field(64, ge=1, le=4096, description="Items per request.")
    max_concurrency: int = Field(8, ge=1, le=256, description="Requests in flight at once.")
    on_error: Literal["fail", "skip_sample", "zero"] = Field(
        "fail", description="What a per-item error does: fail the job, drop the sample, or score it 0."
    )

    @field_validator("url")
    @classmethod
    def _url_shape(cls, v: str | None) -> str | None:
        if v is not None and not (v.startswith("http://") or v.startswith("https://")):
            raise ValueError("reward.url must start with http:// or https://")
        return v

    def header_values(self) -> dict[str, str]:
        return {k: v.get_secret_value() for k, v in self.headers.items()}


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
    warmup_steps: int = Field(0, ge=0, description="Linear warmup, in optimizer steps.")
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
        description=(
            "Samples per optimizer step (default: the whole rollout batch, TRL's num_mini_batches=1: with "
            "ppo's 4 epochs, 4 optimizer steps per rollout; 4 minibatches, as CleanRL, collapsed more often "
            "on small batches, see BENCHMARKS.md)."
        ),
    )
    micro_batch_size: int | None = Field(
        None, ge=1, description="Samples per forward/backward (gradient accumulation); default: minibatch."
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
    kl_horizon: int = Field(10000, ge=1, description="Adaptive KL controller horizon.")
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
    seed: int = Field(0, ge=0, description="Seeds sampling, initialisation and data order.")
    checkpoint_every: int = Field(50, ge=0, description="Checkpoint every N steps (0: only at the end).")
    keep_checkpoints: int = Field(3, ge=1, le=1000, description="Checkpoints kept on disk (newest).")
    logprob_chunk_size: int = Field(
        1024, ge=1, description="Tokens per chunk in the memory-light log-softmax over the vocabulary."
    )
    samples_per_step: int = Field(16, ge=0, le=4096, description="Per-sample records reported each step.")
    # PPO robustness (issue 12)
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

    @model_validator(mode="after")
    def _finite(self) -> Hyperparameters:
        for name, value in self:
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"hyperparameters.{name} must be a finite number")
        return self


class ResourcesSpec(_Frozen):
    gpus: int = Field(1, ge=0, le=64, description="GPUs for this job; >1 runs under `accelerate launch`.")
    queue: str | None = Field(None, description="Celery queue (default: 'gpu', or 'cpu' when gpus is 0).")


class JobSpec(_Frozen):
    algorithm: Algorithm = Field(Algorithm.GRPO, description="grpo or ppo.")
    model: ModelSpec
    dataset: DatasetSpec
    reward: RewardSpec = Field(default_factory=RewardSpec)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    metadata: dict[str, str] = Field(default_factory=dict, description="Free key/values, filterable.")

    @model_validator(mode="before")
    @classmethod
    def _resolve_algorithm_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        algo = str(data.get("algorithm", "grpo"))
        hp = data.get("hyperparameters")
        if hp is None:
            hp = {}
        if isinstance(hp, dict):
            hp = dict(hp)
            if hp.get("kl_in") is None:
                hp["kl_in"] = "reward" if algo == "ppo" else "loss"
            if hp.get("kl_estimator") is None:
                hp["kl_estimator"] = "k1" if hp["kl_in"] == "reward" else "k3"
            if algo == "ppo" and "group_size" not in hp:
                hp["group_size"] = 1
            # What makes PPO PPO (several passes over each rollout, scaled rewards, a critic); GRPO keeps
            # its single pass. The fields' descriptions give the sources and measurements.
            ppo = algo == "ppo"
            if hp.get("epochs_per_rollout") is None:
                hp["epochs_per_rollout"] = 4 if ppo else 1
            if hp.get("reward_norm") is None:
                hp["reward_norm"] = "running" if ppo else "none"
            if ppo and hp.get("value_model") is None:
                hp["value_model"] = "separate"
            if hp.get("whiten_advantages") is None:
                hp["whiten_advantages"] = hp["reward_norm"] == "none"
            data = {**data, "hyperparameters": hp}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        hp = self.hyperparameters
        if self.algorithm is not Algorithm.PPO:
            for name, off in (("reward_norm", "none"), ("value_model", None), ("critic_warmup_steps", 0)):
                if getattr(hp, name) != off:
                    raise ValueError(
                        f"hyperparameters.{name} is used by ppo only: remove it "
                        "(grpo scales rewards per group, see scale_rewards, and has no critic)"
                    )
        if hp.value_model == "shared" and self.model.value_name_or_path:
            raise ValueError(
                "model.value_name_or_path needs hyperparameters.value_model='separate' "
                "(a shared critic is a head on the policy's backbone)"
            )
        if hp.minibatch_size and hp.minibatch_size > self.rollout_batch_size:
            raise ValueError(
                f"hyperparameters.minibatch_size ({hp.minibatch_size}) is larger than the rollout "
                f"(prompts_per_step * group_size = {self.rollout_batch_size}): lower it"
            )
        if self.algorithm is Algorithm.GRPO and hp.group_size < 2:
            raise ValueError(
                "hyperparameters.group_size must be at least 2 for grpo "
                "(advantages compare samples of a group)"
            )
        batch = hp.prompts_per_step * hp.group_size
        mb = hp.minibatch_size or batch
        if batch % mb:
            raise ValueError(
                f"hyperparameters.prompts_per_step * group_size ({batch}) "
                f"must divide by minibatch_size ({mb})"
            )
        if hp.micro_batch_size and mb % hp.micro_batch_size:
            raise ValueError(
                f"hyperparameters.minibatch_size ({mb}) "
                f"must divide by micro_batch_size ({hp.micro_batch_size})"
            )
        if hp.kl_target is not None and hp.kl_in != "reward":
            raise ValueError("hyperparameters.kl_target (adaptive KL) needs kl_in='reward'")
        if hp.kl_target is not None and hp.kl_coef == 0:
            raise ValueError("hyperparameters.kl_target needs a starting kl_coef > 0")
        if self.model.value_name_or_path and self.algorithm is not Algorithm.PPO:
            raise ValueError("model.value_name_or_path is only used by ppo")
        return self

    @property
    def rollout_batch_size(self) -> int:
        return self.hyperparameters.prompts_per_step * self.hyperparameters.group_size

    def queue(self, gpu_queue: str = "gpu") -> str:
        """The Celery queue: `resources.queue`, else `gpu_queue` (the service default), or cpu at 0 GPUs."""
        if self.resources.queue:
            return self.resources.queue
        return gpu_queue if self.resources.gpus > 0 else "cpu"

    def public_dict(self) -> dict[str, Any]:
        """The spec as a client may see it: reward header values are replaced by their names only."""
        d = self.model_dump(mode="json")
        d["reward"]["headers"] = {k: "********" for k in self.reward.headers}
        return d

    def secret_dict(self) -> dict[str, Any]:
        """The full spec with header values in clear (for encryption at rest and for the worker)."""
        d = self.model_dump(mode="json")
        d["reward"]["headers"] = self.reward.header_values()
        return d


def load_spec(path: str) -> JobSpec:
    """Read a YAML or JSON spec file."""
    import yaml

    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a job spec is a mapping with 'model', 'dataset', ... at the top level")
    return JobSpec.model_validate(data)
