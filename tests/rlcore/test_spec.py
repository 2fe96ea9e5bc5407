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
    # What makes PPO PPO; GRPO keeps its single pass over the whole batch and has no critic.
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


def test_strategy_defaults_to_ddp_and_fsdp_needs_two_ranks():
    assert _spec().resources.strategy == "ddp" and not _spec().hyperparameters.gradient_checkpointing
    spec = _spec(resources={"gpus": 2, "strategy": "fsdp"}, hyperparameters={"gradient_checkpointing": True})
    assert spec.resources.strategy == "fsdp" and spec.hyperparameters.gradient_checkpointing
    assert JobSpec.model_validate(spec.secret_dict()) == spec
    assert "resources.gpus is 1: ask for gpus >= 2" in _error(resources={"strategy": "fsdp"})
    assert "'ddp' or 'fsdp'" in _error(resources={"gpus": 2, "strategy": "deepspeed"})


def test_spec_is_frozen():
    spec = _spec()
    with pytest.raises(ValidationError):
        spec.hyperparameters.steps = 5


# --- Strict, finite, bounded; secrets never in a message; spec files that cannot blow up ---


@pytest.mark.parametrize(
    "over, field",
    [
        ({"hyperparameters": {"steps": True}}, "hyperparameters.steps"),
        ({"hyperparameters": {"steps": 2.0}}, "hyperparameters.steps"),
        ({"hyperparameters": {"temperature": False}}, "hyperparameters.temperature"),
        ({"hyperparameters": {"seed": 2**64}}, "hyperparameters.seed"),
        ({"hyperparameters": {"kl_coef": float("inf")}}, "hyperparameters.kl_coef"),
        ({"hyperparameters": {"max_grad_norm": float("nan")}}, "hyperparameters.max_grad_norm"),
        ({"model": {"name_or_path": "m", "lora": {"alpha": "inf"}}}, "model.lora.alpha"),
        ({"model": {"name_or_path": "m", "lora": {"r": True}}}, "model.lora.r"),
        ({"resources": {"gpus": True}}, "resources.gpus"),
        ({"dataset": {"rows": [{"prompt": "p", "label": float("inf")}]}}, "dataset"),
    ],
)
def test_numbers_are_strict_and_finite(over, field):
    with pytest.raises(ValidationError) as e:
        _spec(**over)
    # A non-finite Python float is caught by the walk of the enclosing field, which names the rest.
    locs = [".".join(str(p) for p in err["loc"]) for err in e.value.errors()]
    assert any(field == loc or field.startswith(loc + ".") and field in str(e.value) for loc in locs)


def test_what_stays_accepted():
    # An int for a float, an enum's string (also from a Python dict: the worker and CLI path), 2**31 - 1.
    spec = _spec(algorithm="ppo", hyperparameters={"learning_rate": 1, "seed": 2**31 - 1})
    assert spec.hyperparameters.learning_rate == 1.0 and spec.algorithm.value == "ppo"
    assert JobSpec.model_validate(spec.secret_dict()) == spec


def test_a_bad_header_value_is_not_in_any_message():
    for value in ["Bearer canary-1 ", "Bearer canary-1\r\n", "Bearer canary-1\x00", "Bearer canary-\u00e9"]:
        with pytest.raises(ValidationError) as e:
            _spec(reward={"url": "https://r.example", "headers": {"Authorization": value}})
        assert "canary" not in str(e.value) and "canary" not in repr(e.value.errors(include_input=False))
        assert "Authorization" in str(e.value)


def test_walk_names_the_place_and_survives_any_depth():
    from rlcore.spec import check_json_value

    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ValueError, match="label.*nests deeper than 64"):
        check_json_value(deep, "label")
    with pytest.raises(ValueError, match=r"^rows\[1\]\.meta\.k contains a lone surrogate"):
        check_json_value([{}, {"meta": {"k": "\ud800"}}], "rows")
    check_json_value({"emoji": "\U0001f600", "n": [1, 2.5, None, True]}, "row")


def _write(tmp_path, text: str):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_spec_files_load_with_yaml_1_2_floats(tmp_path):
    from rlcore.spec import load_spec

    path = _write(
        tmp_path,
        "model: {name_or_path: m}\ndataset: {rows: [{prompt: p}]}\n"
        "hyperparameters: {learning_rate: 1e-6, steps: 3}\n",
    )
    assert load_spec(str(path)).hyperparameters.learning_rate == 1e-6


@pytest.mark.parametrize(
    "text, message",
    [
        # "Billion laughs": nine levels of nine aliases expand to 9**9 values from a few hundred bytes.
        (
            "a: &a [x, x, x, x, x, x, x, x, x]\n"
            + "".join(
                f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
            ),
            "expands to more than",
        ),
        ("x: &x [1]\n" + "".join(f"k{i}: *x\n" for i in range(101)), "more than 100 YAML aliases"),
        ("a: &a [*a]\n", "contains itself"),
        ("[" * 50_000 + "]" * 50_000, "nests too deeply"),
        ("model: [unclosed\n", "is not valid YAML"),
        ("- a list\n", "a job spec is a mapping"),
    ],
)
def test_spec_files_that_would_exhaust_memory_are_refused(tmp_path, text, message):
    from rlcore.spec import SpecFileError, load_spec_data

    with pytest.raises(SpecFileError, match=message):
        load_spec_data(_write(tmp_path, text))


def test_spec_files_have_a_size_limit(tmp_path, monkeypatch):
    from rlcore.spec import files as spec_module

    monkeypatch.setattr(spec_module, "MAX_SPEC_FILE_BYTES", 100)
    with pytest.raises(spec_module.SpecFileError, match="limited to 100"):
        spec_module.load_spec_data(_write(tmp_path, "model: {name_or_path: m}\n" + "#" * 200))
