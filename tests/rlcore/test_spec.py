"""The job spec: defaults that work, and validation messages that say what to fix."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rlcore.spec import JobSpec

BASE = {"model": {"name_or_path": "m"}, "dataset": {"rows": [{"prompt": "p"}]}}


def _spec(**over):
    d = {**BASE, **over}
    return JobSpec.model_validate(d)


def _error(**over) -> str:
    with pytest.raises(ValidationError) as e:
        _spec(**over)
    return str(e.value)


def test_defaults_resolve_per_algorithm():
    grpo = _spec()
    assert grpo.hyperparameters.kl_in == "loss" and grpo.hyperparameters.kl_estimator == "k3"
    assert grpo.hyperparameters.group_size == 8 and grpo.queue() == "gpu"
    ppo = _spec(algorithm="ppo")
    assert ppo.hyperparameters.kl_in == "reward" and ppo.hyperparameters.kl_estimator == "k1"
    assert ppo.hyperparameters.group_size == 1
    assert _spec(resources={"gpus": 0}).queue() == "cpu"
    # What makes PPO PPO (issue 12); GRPO keeps its single pass over the whole batch and has no critic.
    g, p = grpo.hyperparameters, ppo.hyperparameters
    assert (g.epochs_per_rollout, g.minibatch_size, g.reward_norm, g.value_model) == (1, None, "none", None)
    assert (p.epochs_per_rollout, p.minibatch_size, p.reward_norm) == (4, None, "running")
    assert (p.value_model, p.critic_warmup_steps, p.entropy_coef, p.value_clip) == ("separate", 0, 0.0, 0.2)
    assert p.whiten_advantages is False  # the rewards are normalised already
    assert _spec(algorithm="ppo", hyperparameters={"reward_norm": "none"}).hyperparameters.whiten_advantages
    assert grpo.queue("a100") == "a100" and _spec(resources={"queue": "q"}).queue("a100") == "q"


@pytest.mark.parametrize(
    "over, message",
    [
        (
            {"hyperparameters": {"prompts_per_step": 3, "group_size": 2, "minibatch_size": 4}},
            "prompts_per_step * group_size (6) must divide by minibatch_size (4)",
        ),
        ({"hyperparameters": {"group_size": 1}}, "group_size must be at least 2 for grpo"),
        ({"dataset": {"rows": []}}, "dataset.rows is empty"),
        ({"dataset": {"rows": [{"text": "x"}]}}, "dataset.rows[0] needs a 'prompt'"),
        ({"dataset": {"rows": [{"prompt": "x"}], "path": "a.jsonl"}}, "give exactly one of"),
        ({"reward": {"url": "ftp://x"}}, "reward.url must start with http:// or https://"),
        ({"hyperparameters": {"kl_target": 6.0}}, "kl_target (adaptive KL) needs kl_in='reward'"),
        ({"hyperparameters": {"learning_rate": -1}}, "learning_rate"),
        ({"hyperparameters": {"stepz": 3}}, "stepz"),
        ({"algorithm": "dpo"}, "algorithm"),
    ],
)
def test_invalid_specs_say_what_to_fix(over, message):
    assert message in _error(**over)


def _ppo(**hp):
    return {"algorithm": "ppo", "hyperparameters": {"prompts_per_step": 8, **hp}}


@pytest.mark.parametrize(
    "over, message",
    [
        (_ppo(reward_norm="whiten"), "hyperparameters.reward_norm"),
        (_ppo(value_model="tiny"), "hyperparameters.value_model"),
        (_ppo(critic_warmup_steps=-1), "hyperparameters.critic_warmup_steps"),
        (_ppo(entropy_coef=-0.01), "hyperparameters.entropy_coef"),
        (_ppo(entropy_coef=float("nan")), "hyperparameters.entropy_coef"),
        (_ppo(minibatch_size=9), "hyperparameters.minibatch_size (9) is larger than the rollout"),
        ({"hyperparameters": {"reward_norm": "batch"}}, "hyperparameters.reward_norm is used by ppo only"),
        ({"hyperparameters": {"value_model": "shared"}}, "hyperparameters.value_model is used by ppo only"),
        ({"hyperparameters": {"critic_warmup_steps": 3}}, "critic_warmup_steps is used by ppo only"),
        (
            {**_ppo(value_model="shared"), "model": {"name_or_path": "m", "value_name_or_path": "v"}},
            "model.value_name_or_path needs hyperparameters.value_model='separate'",
        ),
    ],
)
def test_invalid_ppo_settings_name_the_field(over, message):
    assert message in _error(**over)


def test_reward_headers_are_write_only():
    spec = _spec(reward={"url": "https://r.example", "headers": {"Authorization": "Bearer canary-123"}})
    assert "canary-123" not in str(spec.public_dict())
    assert "canary-123" not in repr(spec)
    assert spec.secret_dict()["reward"]["headers"]["Authorization"] == "Bearer canary-123"
    assert JobSpec.model_json_schema()["$defs"]["RewardSpec"]["properties"]["headers"]["writeOnly"] is True


def test_spec_is_frozen():
    spec = _spec()
    with pytest.raises(ValidationError):
        spec.hyperparameters.steps = 5
