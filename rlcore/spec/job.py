"""``JobSpec``, the whole job: the parts of the other modules, algorithm defaults resolved once, and the rules
that span parts."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from rlcore.metrics import (
    EVAL_MEAN_AT_K,
    EVAL_PASS_AT_K,
    default_best_metric,
    is_eval_metric,
    produces_metric,
)
from rlcore.spec.base import (
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE,
    METADATA_KEY_PATTERN,
    Algorithm,
    _Frozen,
)
from rlcore.spec.dataset import DatasetSpec
from rlcore.spec.evaluation import CheckpointPolicy, EarlyStopSpec, EvaluationSpec
from rlcore.spec.hyperparameters import (
    Hyperparameters,
    ResourcesSpec,
)
from rlcore.spec.model import ModelSpec
from rlcore.spec.rewards import (
    MAX_REWARDS,
    RewardEntry,
    RewardSpec,
    _http_dicts,
    apply_header_secrets,
    check_reward_list,
    header_secrets,
    http_rewards,
)

_MetadataKey = Annotated[str, StringConstraints(pattern=METADATA_KEY_PATTERN)]
_MetadataValue = Annotated[str, StringConstraints(max_length=MAX_METADATA_VALUE)]


class JobSpec(_Frozen):
    algorithm: Algorithm = Field(Algorithm.GRPO, strict=False, description="grpo or ppo.")
    model: ModelSpec
    dataset: DatasetSpec
    reward: RewardSpec | None = Field(
        None, description="One HTTP endpoint (the default when rewards is not given)."
    )
    rewards: list[RewardEntry] | None = Field(
        None,
        min_length=1,
        max_length=MAX_REWARDS,
        description="Instead of reward: weighted HTTP endpoints and built-in graders, summed.",
    )
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    evaluation: EvaluationSpec | None = Field(
        None, description="Held-out prompts scored at step 0, every every_steps steps and at the end."
    )
    checkpoints: CheckpointPolicy = Field(
        default_factory=CheckpointPolicy, description="Which checkpoint is best, and which ones are kept."
    )
    early_stop: EarlyStopSpec | None = Field(
        None, description="End the job early once a metric stops improving (it ends succeeded)."
    )
    metadata: dict[_MetadataKey, _MetadataValue] = Field(
        default_factory=dict,
        max_length=MAX_METADATA_KEYS,
        description=f"Free key/values, filterable (at most {MAX_METADATA_KEYS} keys).",
    )

    @model_validator(mode="before")
    @classmethod
    def _resolve_algorithm_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if data.get("rewards") is None and data.get("reward") is None:
            data = {**data, "reward": {}}
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
        self._check_metric("checkpoints.best_metric", self.checkpoints.best_metric)
        if self.early_stop is not None:
            self._check_metric("early_stop.metric", self.early_stop.metric)
        return self

    def _check_metric(self, field: str, name: str | None) -> None:
        if name is None or produces_metric(self, name):
            return
        if is_eval_metric(name) and self.evaluation is None:
            raise ValueError(
                f"{field} {name!r} is an evaluation metric: add an evaluation section or name "
                "a training metric such as reward/mean"
            )
        if name in (EVAL_PASS_AT_K, EVAL_MEAN_AT_K):
            raise ValueError(f"{field} {name!r} needs evaluation.samples_per_prompt > 1")
        raise ValueError(
            f"{field} {name!r} is not a metric this job reports: use reward/mean, eval/reward/mean, "
            "reward/<component>/mean or another name listed in the README's metrics table"
        )

    def best_metric(self) -> str:
        """``checkpoints.best_metric`` resolved: eval/reward/mean with evaluation, else reward/mean."""
        return self.checkpoints.best_metric or default_best_metric(self)

    def early_stop_metric(self) -> str | None:
        """``early_stop.metric`` resolved like ``best_metric``; None without early stopping."""
        if self.early_stop is None:
            return None
        return self.early_stop.metric or default_best_metric(self)

    @field_validator("rewards")
    @classmethod
    def _one_reward_form(cls, rewards: list[Any] | None, info: ValidationInfo) -> list[Any] | None:
        return check_reward_list(rewards, info)

    @property
    def rollout_batch_size(self) -> int:
        return self.hyperparameters.prompts_per_step * self.hyperparameters.group_size

    def queue(self, gpu_queue: str = "gpu") -> str:
        """The Celery queue: `resources.queue`, else `gpu_queue` (the service default), or cpu at 0 GPUs."""
        if self.resources.queue:
            return self.resources.queue
        return gpu_queue if self.resources.gpus > 0 else "cpu"

    def http_rewards(self) -> list[tuple[str, RewardSpec]]:
        """Every HTTP endpoint of the job with the field path that names it (``reward``, ``rewards[1]``)."""
        return http_rewards(self.reward, self.rewards)

    def header_secrets(self) -> dict[str, Any]:
        """The reward header values in their stored shape (see ``apply_header_secrets``)."""
        return header_secrets(self.reward, self.rewards)

    def public_dict(self) -> dict[str, Any]:
        """The spec as a client may see it: reward header values are replaced by their names only."""
        d = self._dump()
        for entry in _http_dicts(d):
            entry["headers"] = {k: "********" for k in entry.get("headers") or {}}
        return d

    def secret_dict(self) -> dict[str, Any]:
        """The full spec with header values in clear (for encryption at rest and for the worker)."""
        return apply_header_secrets(self._dump(), self.header_secrets())

    def _dump(self) -> dict[str, Any]:
        # The unused one of reward/rewards is left out, so that a stored spec validates again as it was.
        d = self.model_dump(mode="json", by_alias=True)
        d.pop("rewards" if self.rewards is None else "reward")
        return d
