"""The metric names a job reports, defined once: the engine writes them, the spec checks that
``checkpoints.best_metric`` and ``early_stop.metric`` name one the job will produce, the service ranks
checkpoints by them.

Training metrics are a fixed set (some only for ppo, or with a KL term) plus open families: the reward's
named components (``reward/<component>/mean``, ``.../std``) and the reward endpoints' call statistics
(``reward_endpoint/...``). Evaluation metrics carry the ``eval/`` prefix; their names are fixed whatever
``samples_per_prompt`` is (``eval/pass@k``, literally), so a spec can name them before k is known.

Imports nothing of torch or of the spec at run time (the spec's validator calls this module).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlcore.spec import JobSpec

REWARD_MEAN = "reward/mean"
EVAL_PREFIX = "eval/"
EVAL_REWARD_MEAN = "eval/reward/mean"
EVAL_REWARD_STD = "eval/reward/std"
EVAL_LENGTH_MEAN = "eval/length_mean"
EVAL_PASS_AT_K = "eval/pass@k"  # prompts with at least one of their k completions passing
EVAL_MEAN_AT_K = "eval/mean@k"  # mean over prompts of the fraction of their k completions passing
EVAL_TIME_S = "eval/time_s"  # wall time of the evaluation (generation and scoring)

TRAINING_METRICS = frozenset(
    {
        "reward/mean",
        "reward/std",
        "reward/min",
        "reward/max",
        "completion/length_mean",
        "completion/clipped_ratio",
        "kl/coef",
        "loss/policy",
        "loss/total",
        "policy/clipfrac",
        "policy/approx_kl",
        "policy/entropy",
        "optim/grad_norm",
        "optim/lr",
        "time/generate_s",
        "time/reward_s",
        "time/train_s",
        "time/step_s",
        "throughput/tokens_per_s",
        "memory/peak_bytes",
    }
)
PPO_METRICS = frozenset(
    {"value/mean", "value/explained_variance", "loss/value", "value/clipfrac", "optim/value_grad_norm"}
)
GRPO_METRICS = frozenset({"reward/frac_zero_std_groups"})


def default_best_metric(spec: JobSpec | dict[str, Any]) -> str:
    """``eval/reward/mean`` when the job evaluates, else ``reward/mean``.

    Takes the spec or its stored dict: the service ranks checkpoints of stored jobs by the same rule.
    """
    evaluation = spec.get("evaluation") if isinstance(spec, dict) else spec.evaluation
    return EVAL_REWARD_MEAN if evaluation is not None else REWARD_MEAN


def eval_metric_names(samples_per_prompt: int) -> list[str]:
    """The fixed evaluation metrics (components come on top: ``eval/reward/<component>/mean``)."""
    names = [EVAL_REWARD_MEAN, EVAL_REWARD_STD, EVAL_LENGTH_MEAN, EVAL_TIME_S]
    return names + ([EVAL_PASS_AT_K, EVAL_MEAN_AT_K] if samples_per_prompt > 1 else [])


def is_eval_metric(name: str) -> bool:
    return name.startswith(EVAL_PREFIX)


def produces_metric(spec: JobSpec, name: str) -> bool:
    """Whether a run of ``spec`` reports ``name`` (at some step)."""
    if is_eval_metric(name):
        if spec.evaluation is None:
            return False
        rest = name[len(EVAL_PREFIX) :]
        if name in eval_metric_names(spec.evaluation.samples_per_prompt):
            return True
        return rest.startswith("reward/") and rest.endswith("/mean") and _is_component(spec, rest[7:-5])
    hp = spec.hyperparameters
    ppo = spec.algorithm.value == "ppo"
    if name in TRAINING_METRICS or name in (PPO_METRICS if ppo else GRPO_METRICS):
        return True
    if name == "kl/mean":
        return hp.kl_coef > 0
    if name == "loss/kl":
        return hp.kl_coef > 0 and hp.kl_in == "loss"
    if name == "loss/entropy":
        return hp.entropy_coef > 0
    if name.startswith("reward_endpoint/"):  # call statistics of any reward source (per entry with rewards)
        return True
    for stat in ("/mean", "/std"):
        if name.startswith("reward/") and name.endswith(stat):
            return _is_component(spec, name[7 : -len(stat)])
    return False


def _is_component(spec: JobSpec, component: str) -> bool:
    """Whether the reward may report a component named ``component``: with ``rewards``, an entry's name (or
    ``<http entry>/<part>``, the parts its endpoint reports); with one ``reward`` endpoint, any name."""
    if not component:
        return False
    if spec.rewards is None:
        return True
    entry, _, part = component.partition("/")
    for e in spec.rewards:
        if e.name == entry:
            return not part or e.type == "http"
    return False
