"""The evaluation, checkpoint-policy and early-stopping parts of the job spec (issue 15)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rlcore.metrics import produces_metric
from rlcore.spec import CheckpointPolicy, EarlyStopSpec, EvaluationSpec, JobSpec

ROWS = [{"prompt": "1+1=", "label": "2"}, {"prompt": "2+2=", "label": "4"}]
EVAL = {"dataset": {"rows": [{"prompt": "3+3=", "label": "6"}]}}
GRADERS = [
    {"type": "number", "name": "correct", "reference": "{{label}}"},
    {"type": "http", "name": "judge", "url": "http://127.0.0.1:1/score"},
]


def spec(**extra) -> JobSpec:
    return JobSpec.model_validate({"model": {"name_or_path": "m"}, "dataset": {"rows": ROWS}, **extra})


def refused(match: str, **extra) -> None:
    with pytest.raises(ValidationError, match=match):
        spec(**extra)


def test_defaults_keep_a_job_without_evaluation_as_it_was():
    s = spec()
    assert s.evaluation is None and s.early_stop is None
    assert s.checkpoints == CheckpointPolicy(best_metric=None, best_mode="max", keep_last=None, keep_best=1)
    assert s.best_metric() == "reward/mean" and s.early_stop_metric() is None
    assert JobSpec.model_validate(s.public_dict()) == s  # a stored spec validates again as it was


def test_evaluation_defaults_and_the_resolved_metrics():
    s = spec(evaluation=EVAL, early_stop={"patience": 2})
    ev = s.evaluation
    assert isinstance(ev, EvaluationSpec)
    assert (ev.every_steps, ev.samples_per_prompt, ev.temperature) == (10, 1, 0.0)
    assert (ev.max_new_tokens, ev.max_prompts, ev.pass_threshold) == (None, None, 1.0)
    assert s.best_metric() == "eval/reward/mean"
    assert s.early_stop_metric() == "eval/reward/mean"
    assert s.early_stop == EarlyStopSpec(metric=None, mode="max", patience=2, min_delta=0.0)
    assert JobSpec.model_validate(s.public_dict()) == s


def test_an_empty_evaluation_set_is_refused_with_its_field():
    with pytest.raises(ValidationError) as e:
        spec(evaluation={"dataset": {"rows": []}})
    err = e.value.errors()[0]
    assert err["loc"][:2] == ("evaluation", "dataset") and "empty" in err["msg"]


@pytest.mark.parametrize(
    "extra,match",
    [
        ({"checkpoints": {"keep_last": 0}}, "keep_last"),
        ({"checkpoints": {"keep_best": -1}}, "keep_best"),
        ({"checkpoints": {"best_mode": "up"}}, "best_mode"),
        ({"evaluation": {**EVAL, "every_steps": 0}}, "every_steps"),
        ({"evaluation": {**EVAL, "samples_per_prompt": 65}}, "samples_per_prompt"),
        ({"evaluation": {**EVAL, "temperature": -0.1}}, "temperature"),
        ({"evaluation": {**EVAL, "max_prompts": 0}}, "max_prompts"),
        ({"evaluation": {**EVAL, "max_new_tokens": 0}}, "max_new_tokens"),
        ({"evaluation": {**EVAL, "typo": 1}}, "typo"),
        ({"evaluation": {"every_steps": 5}}, "dataset"),
        ({"early_stop": {}}, "patience"),
        ({"early_stop": {"patience": 0}}, "patience"),
        ({"early_stop": {"patience": 2, "min_delta": -1}}, "min_delta"),
        ({"early_stop": {"patience": 2, "mode": "lower"}}, "mode"),
    ],
)
def test_bad_values_are_refused_naming_the_field(extra, match):
    refused(match, **extra)


@pytest.mark.parametrize(
    "extra,match",
    [
        (
            {"checkpoints": {"best_metric": "eval/reward/mean"}},
            "checkpoints.best_metric .* add an evaluation",
        ),
        ({"early_stop": {"patience": 2, "metric": "eval/reward/mean"}}, "early_stop.metric .* evaluation"),
        (
            {"evaluation": EVAL, "checkpoints": {"best_metric": "eval/pass@k"}},
            "checkpoints.best_metric .* needs evaluation.samples_per_prompt > 1",
        ),
        ({"checkpoints": {"best_metric": "reward/mena"}}, "checkpoints.best_metric 'reward/mena' is not"),
        ({"checkpoints": {"best_metric": "value/mean"}}, "not a metric this job reports"),  # ppo only
        ({"checkpoints": {"best_metric": "kl/mean"}}, "not a metric"),  # no KL term (kl_coef 0)
        ({"rewards": GRADERS, "checkpoints": {"best_metric": "reward/other/mean"}}, "not a metric"),
        ({"rewards": GRADERS, "checkpoints": {"best_metric": "reward/correct/x/mean"}}, "not a metric"),
    ],
)
def test_metrics_the_job_never_produces_are_refused(extra, match):
    refused(match, **extra)


@pytest.mark.parametrize(
    "extra,name",
    [
        ({}, "reward/mean"),
        ({}, "loss/policy"),
        ({}, "reward/anything/mean"),  # one HTTP endpoint may report any component
        ({"rewards": GRADERS}, "reward/correct/mean"),
        ({"rewards": GRADERS}, "reward/judge/style/std"),  # an endpoint entry's own parts
        ({"evaluation": EVAL}, "eval/reward/std"),
        ({"evaluation": EVAL}, "eval/length_mean"),
        ({"evaluation": EVAL, "rewards": GRADERS}, "eval/reward/correct/mean"),
        ({"evaluation": {**EVAL, "samples_per_prompt": 4}}, "eval/pass@k"),
        ({"evaluation": {**EVAL, "samples_per_prompt": 4}}, "eval/mean@k"),
        ({"hyperparameters": {"kl_coef": 0.1}}, "kl/mean"),
        ({"algorithm": "ppo"}, "value/explained_variance"),
    ],
)
def test_metrics_the_job_produces_are_accepted(extra, name):
    s = spec(
        **extra,
        checkpoints={"best_metric": name, "best_mode": "min"},
        early_stop={"metric": name, "patience": 1},
    )
    assert produces_metric(s, name)
    assert s.best_metric() == name and s.early_stop_metric() == name


def test_a_spec_file_with_evaluation_loads(tmp_path):
    from rlcore.spec import load_spec

    path = tmp_path / "spec.yaml"
    path.write_text(
        "model: {name_or_path: m}\n"
        "dataset: {rows: [{prompt: a}]}\n"
        "evaluation: {dataset: {path: eval.jsonl}, every_steps: 5, samples_per_prompt: 4, temperature: 0.7}\n"
        "checkpoints: {keep_last: 2, keep_best: 1, best_mode: max}\n"
        "early_stop: {metric: eval/pass@k, patience: 3, min_delta: 1e-3}\n",
        encoding="utf-8",
    )
    s = load_spec(str(path))
    assert s.evaluation.dataset.path == "eval.jsonl" and s.early_stop.min_delta == 1e-3
    assert s.best_metric() == "eval/reward/mean" and s.early_stop_metric() == "eval/pass@k"
