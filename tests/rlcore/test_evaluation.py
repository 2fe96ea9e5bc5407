"""Held-out evaluation, checkpoints at evaluated steps and early stopping (issue 15), on the tiny model with
the job's own graders (the spec's reward path, no reward_fn)."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from rlcore import checkpoint as ckpt
from rlcore.callbacks import Callback
from rlcore.errors import DatasetError, Interrupted
from rlcore.rewards import RewardURLPolicy
from rlcore.spec import JobSpec
from rlcore.trainer import train
from tests.rlcore.helpers import PROMPTS

EVAL_PROMPTS = ["Tell me:", "Reply now:", "Once more:"]
# 1.0 when the completion holds an 'a' (the tiny model's random text sometimes does): rewards vary.
HAS_A = {"type": "regex", "name": "has_a", "pattern": "a"}
NEVER = {"type": "regex", "name": "never", "pattern": "(?!)"}  # matches nothing: a reward stuck at 0


def job(model: str, *, evaluation=None, rewards=(HAS_A,), early_stop=None, **hp) -> JobSpec:
    hyper = dict(
        steps=3, prompts_per_step=2, group_size=4, max_new_tokens=8, learning_rate=1e-2, checkpoint_every=0
    )
    hyper.update(seed=1, **hp)
    data = {
        "model": {"name_or_path": model},
        "dataset": {"rows": [{"prompt": p} for p in PROMPTS]},
        "rewards": list(rewards),
        "hyperparameters": hyper,
    }
    if evaluation is not None:
        data["evaluation"] = {"dataset": {"rows": [{"prompt": p} for p in EVAL_PROMPTS]}, **evaluation}
    if early_stop is not None:
        data["early_stop"] = early_stop
    return JobSpec.model_validate(data)


class Recorder(Callback):
    def __init__(self):
        self.metrics, self.samples, self.checkpoints, self.events = [], [], [], []

    def on_step_end(self, step, metrics):
        self.metrics.append((step, dict(metrics)))

    def on_samples(self, step, samples):
        self.samples.append((step, samples))

    def on_checkpoint(self, step, path, manifest):
        self.checkpoints.append(step)

    def on_event(self, level, message, data=None):
        self.events.append((level, message, data or {}))

    def eval_steps(self) -> list[int]:
        return [s for s, m in self.metrics if "eval/reward/mean" in m]

    def eval_samples(self) -> dict[int, list[dict]]:
        out: dict[int, list[dict]] = {}
        for step, samples in self.samples:
            if samples and samples[0]["split"] == "eval":
                assert step not in out, f"eval samples of step {step} delivered twice"
                out[step] = samples
        return out


def _final_weights(run_dir, step):
    return load_file(str(run_dir / "checkpoints" / f"step-{step:06d}" / "model" / "model.safetensors"))


def test_eval_runs_at_step_0_every_n_and_the_last_step_exactly_once(tmp_path, tiny_model_path):
    spec = job(tiny_model_path, evaluation={"every_steps": 2}, steps=5)
    rec = Recorder()
    result = train(spec, tmp_path, callbacks=[rec])
    assert result.status == "succeeded" and not result.stopped_early
    assert rec.eval_steps() == [0, 2, 4, 5]
    assert [s for s, _ in rec.metrics] == [0, 1, 2, 3, 4, 5]
    baseline = rec.metrics[0][1]
    assert set(baseline) == {
        "eval/reward/mean",
        "eval/reward/std",
        "eval/length_mean",
        "eval/time_s",
        "eval/reward/has_a/mean",
    }
    assert 0.0 <= baseline["eval/reward/mean"] <= 1.0 and 1 <= baseline["eval/length_mean"] <= 8
    assert "reward/mean" in rec.metrics[2][1] and "loss/policy" in rec.metrics[2][1]  # merged, not instead
    # A checkpoint at each evaluated step (checkpoint_every is 0): each evaluated model can be the best.
    assert rec.checkpoints == [0, 2, 4, 5]
    # Eval samples: every prompt once (k = 1), numbered from 0 per step, marked as such.
    evals = rec.eval_samples()
    assert sorted(evals) == [0, 2, 4, 5]
    for samples in evals.values():
        assert [s["index"] for s in samples] == [0, 1, 2] and [s["group"] for s in samples] == [0, 1, 2]
        assert [s["prompt"] for s in samples] == EVAL_PROMPTS
        assert all(s["split"] == "eval" and s["components"] == {"has_a": s["reward"]} for s in samples)
    train_samples = [s for step, batch in rec.samples for s in batch if s["split"] == "train"]
    assert len(train_samples) == 5 * 8
    # Greedy (temperature 0): the same model gives the same completions; the baseline is the base model.
    again = Recorder()
    train(job(tiny_model_path, evaluation={"every_steps": 2}, steps=1), tmp_path / "again", callbacks=[again])
    assert [s["completion"] for s in again.eval_samples()[0]] == [s["completion"] for s in evals[0]]
    assert not [e for e in rec.events if e[2].get("reason") == "eval_overlaps_train"]


def test_evaluation_changes_nothing_of_training(tmp_path, tiny_model_path):
    # Sampled evaluation (temperature > 0, k = 3) draws random numbers: none of them from training's stream.
    plain = job(tiny_model_path, steps=3)
    evaluated = job(
        tiny_model_path, evaluation={"every_steps": 1, "temperature": 1.0, "samples_per_prompt": 3}, steps=3
    )
    a, b = Recorder(), Recorder()
    train(plain, tmp_path / "plain", callbacks=[a])
    train(evaluated, tmp_path / "evaluated", callbacks=[b])
    wa, wb = _final_weights(tmp_path / "plain", 3), _final_weights(tmp_path / "evaluated", 3)
    assert wa.keys() == wb.keys()
    assert not [k for k in wa if not (wa[k] == wb[k]).all()], "evaluation changed the trained weights"
    for (sa, ma), (sb, mb) in zip(a.metrics, [m for m in b.metrics if m[0] > 0], strict=True):
        assert sa == sb and ma["reward/mean"] == mb["reward/mean"]
    # k > 1: pass@k and mean@k, fractions of prompts, pass@k >= mean@k; k samples per prompt.
    final = b.metrics[-1][1]
    assert 0.0 <= final["eval/mean@k"] <= final["eval/pass@k"] <= 1.0
    samples = b.eval_samples()[3]
    assert [s["group"] for s in samples] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [s["index"] for s in samples] == list(range(9))
    by_prompt = [[samples[3 * j + i]["reward"] for i in range(3)] for j in range(3)]
    assert final["eval/pass@k"] == pytest.approx(sum(max(r) >= 1.0 for r in by_prompt) / 3)
    assert final["eval/mean@k"] == pytest.approx(sum(sum(r) / 3 for r in by_prompt) / 3)


def test_resume_with_evaluation_is_exact_and_evaluates_no_step_twice(tmp_path, tiny_model_path):
    spec = job(tiny_model_path, evaluation={"every_steps": 2}, steps=4, kl_coef=0.05)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(spec, straight)

    calls = {"n": 0}

    def stop_at_two():
        calls["n"] += 1
        return calls["n"] > 2

    first = Recorder()
    with pytest.raises(Interrupted):
        train(spec, resumed, should_stop=stop_at_two, callbacks=[first])
    assert first.eval_steps() == [0, 2]
    second = Recorder()
    result = train(spec, resumed, callbacks=[second])
    assert result.step == 4 and [s for s, _ in second.metrics] == [3, 4]
    assert second.eval_steps() == [4] and sorted(second.eval_samples()) == [4]
    a, b = _final_weights(straight, 4), _final_weights(resumed, 4)
    assert not [k for k in a if not (a[k] == b[k]).all()], "resume with evaluation is not exact"


def test_a_run_stopped_right_after_its_baseline_does_not_repeat_it(tmp_path, tiny_model_path):
    spec = job(tiny_model_path, evaluation={"every_steps": 5}, steps=2)
    first = Recorder()
    with pytest.raises(Interrupted):
        train(spec, tmp_path, should_stop=lambda: True, callbacks=[first])
    assert first.eval_steps() == [0]
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-000000"]
    state = json.loads((tmp_path / "checkpoints/step-000000/trainer_state.json").read_text())
    assert state["last_eval_step"] == 0
    second = Recorder()
    train(spec, tmp_path, callbacks=[second])
    assert second.eval_steps() == [2]  # the last step only: no second baseline


def test_early_stopping_on_a_plateau_ends_succeeded_with_an_event(tmp_path, tiny_model_path):
    spec = job(
        tiny_model_path,
        evaluation={"every_steps": 2},
        rewards=(NEVER,),
        early_stop={"patience": 2},  # eval/reward/mean: counted in evaluations
        steps=10,
    )
    rec = Recorder()
    result = train(spec, tmp_path, callbacks=[rec])
    # Baseline 0.0 is the best; no improvement at steps 2 and 4: stop at 4.
    assert result.status == "succeeded" and result.stopped_early and result.step == 4
    assert rec.eval_steps() == [0, 2, 4]
    assert rec.checkpoints == [0, 2, 4]  # the final checkpoint is the stop step's, written once
    (event,) = [e for e in rec.events if e[2].get("reason") == "early_stop"]
    level, message, data = event
    assert level == "info" and "eval/reward/mean" in message and "step 4" in message
    assert data == {
        "reason": "early_stop",
        "step": 4,
        "metric": "eval/reward/mean",
        "best": 0.0,
        "best_step": 0,
        "patience": 2,
    }


def test_early_stopping_on_a_training_metric_counts_steps_and_evaluates_the_stop_step(
    tmp_path, tiny_model_path
):
    spec = job(
        tiny_model_path,
        evaluation={"every_steps": 10},
        rewards=(NEVER,),
        early_stop={"metric": "reward/mean", "patience": 2},
        steps=10,
    )
    rec = Recorder()
    result = train(spec, tmp_path, callbacks=[rec])
    assert result.stopped_early and result.step == 3  # best at step 1, no better at 2 and 3
    assert rec.eval_steps() == [0, 3]  # the model that ends the run is evaluated


def test_eval_rows_from_a_file_and_overlap_with_training_warns(tmp_path, tiny_model_path):
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in [PROMPTS[0], *EVAL_PROMPTS]))
    base = job(tiny_model_path, steps=1).model_dump(mode="json", by_alias=True)
    base.pop("reward")
    spec = JobSpec.model_validate(
        {**base, "evaluation": {"dataset": {"path": str(path)}, "max_prompts": 2, "every_steps": 1}}
    )
    rec = Recorder()
    train(spec, tmp_path / "run", callbacks=[rec])
    assert [s["prompt"] for s in rec.eval_samples()[0]] == [PROMPTS[0], EVAL_PROMPTS[0]]  # max_prompts
    (warning,) = [e for e in rec.events if e[2].get("reason") == "eval_overlaps_train"]
    assert warning[0] == "warning" and warning[2]["overlap"] == 1 and warning[2]["eval_rows"] == 2

    missing = JobSpec.model_validate({**base, "evaluation": {"dataset": {"path": str(tmp_path / "nope")}}})
    with pytest.raises(DatasetError, match="evaluation.dataset.path"):
        train(missing, tmp_path / "missing")


def test_eval_is_scored_by_the_jobs_http_endpoint_and_replayed_from_its_log(
    tmp_path, tiny_model_path, server
):
    base = job(tiny_model_path, steps=1).model_dump(mode="json", by_alias=True)
    base.pop("rewards")
    spec = JobSpec.model_validate(
        {
            **base,
            "reward": {"url": server.url("/ok")},
            "evaluation": {"dataset": {"rows": [{"prompt": p} for p in EVAL_PROMPTS]}, "every_steps": 1},
        }
    )
    rec = Recorder()
    train(spec, tmp_path, callbacks=[rec], url_policy=RewardURLPolicy.local())
    ids = [i["id"] for r in server.state.seen("/ok") for i in r["body"]["items"]]
    assert [i for i in ids if i.startswith("eval-")] == [f"eval-{s}-{g}-0" for s in (0, 1) for g in range(3)]
    baseline = rec.metrics[0][1]
    completions = [s["completion"] for s in rec.eval_samples()[0]]
    # The endpoint's reward is len(completion) / 10, its component "len" the length.
    assert baseline["eval/reward/mean"] == pytest.approx(sum(len(c) / 10 for c in completions) / 3)
    assert baseline["eval/reward/len/mean"] == pytest.approx(sum(len(c) for c in completions) / 3)
    # The evaluation's rewards are in the run's reward log, apart from training's, for a replayed step.
    assert sorted(p.name for p in (tmp_path / "rewards").glob("eval-*")) == [
        "eval-000000.rank0.json",
        "eval-000001.rank0.json",
    ]
    # A run that does the same steps again (here: from scratch, same seed) asks the endpoint nothing.
    asked = len(server.state.seen("/ok"))
    again = Recorder()
    train(spec, tmp_path, resume=False, callbacks=[again], url_policy=RewardURLPolicy.local())
    assert len(server.state.seen("/ok")) == asked
    assert again.metrics[0][1]["eval/reward/mean"] == baseline["eval/reward/mean"]
