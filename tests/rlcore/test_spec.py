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
