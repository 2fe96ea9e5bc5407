"""Smoke tests of the loop on the tiny model: every trainable parameter moves, metrics are complete."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlcore.callbacks import Callback
from rlcore.spec import JobSpec
from rlcore.trainer import Trainer, train
from tests.rlcore.helpers import dense_reward, letter_reward, make_spec

GRPO_METRICS = {
    "reward/mean",
    "reward/std",
    "reward/min",
    "reward/max",
    "reward/frac_zero_std_groups",
    "policy/entropy",
    "policy/clipfrac",
    "policy/approx_kl",
    "loss/policy",
    "completion/length_mean",
    "completion/clipped_ratio",
    "optim/lr",
    "optim/grad_norm",
    "time/generate_s",
    "time/reward_s",
    "time/train_s",
    "time/step_s",
    "throughput/tokens_per_s",
    "memory/peak_bytes",
    "reward_endpoint/latency_p50_ms",
    "reward_endpoint/latency_p95_ms",
    "reward_endpoint/errors",
    "reward_endpoint/retries",
}
PPO_METRICS = (GRPO_METRICS - {"reward/frac_zero_std_groups"}) | {
    "loss/value",
    "value/mean",
    "value/explained_variance",
    "kl/mean",
}


class Recorder(Callback):
    def __init__(self):
        self.metrics, self.samples, self.checkpoints, self.ended = [], [], [], None

    def on_step_end(self, step, metrics):
        self.metrics.append((step, metrics))

    def on_samples(self, step, samples):
        self.samples.append((step, samples))

    def on_checkpoint(self, step, path, manifest):
        self.checkpoints.append((step, path, manifest))

    def on_train_end(self, status, error=None):
        self.ended = (status, error)


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_every_trainable_parameter_changes_and_metrics_are_complete(tmp_path, tiny_model_path, algorithm):
    spec = make_spec(tiny_model_path, algorithm, steps=2, kl_coef=0.05)
    rec = Recorder()
    trainer = Trainer(spec, tmp_path, reward_fn=dense_reward, callbacks=[rec])
    before = _params(trainer.policy)
    value_before = _params(trainer.value) if trainer.value is not None else {}
    trainer.run(lambda: False)
    after = _params(trainer.policy)
    unchanged = [n for n in before if torch.equal(before[n], after[n])]
    assert not unchanged, f"parameters that did not change: {unchanged}"
    if trainer.value is not None:
        v_after = _params(trainer.value)
        assert not [n for n in value_before if torch.equal(value_before[n], v_after[n])]
    assert [s for s, _ in rec.metrics] == [1, 2]
    expected = PPO_METRICS if algorithm == "ppo" else GRPO_METRICS | {"kl/mean"}
    missing = expected - set(rec.metrics[-1][1])
    assert not missing, f"missing metrics: {missing}"
    assert all(math.isfinite(v) for _, m in rec.metrics for v in m.values())
    assert rec.ended == ("succeeded", None)
    step, samples = rec.samples[0]
    assert step == 1 and {"prompt", "completion", "reward", "index", "group", "error"} <= set(samples[0])
    # The final checkpoint is a Hugging Face directory that loads with the ordinary API.
    final_step, path, manifest = rec.checkpoints[-1]
    assert final_step == 2 and manifest["step"] == 2
    AutoModelForCausalLM.from_pretrained(f"{path}/model")
    trainer.close()


def test_first_update_ratio_is_exactly_one(tmp_path, tiny_model_path):
    # One epoch, one minibatch: old log-probs are the detached current ones, so nothing can be clipped and
    # the approximate KL between old and new is exactly zero (field note 8).
    spec = make_spec(tiny_model_path, "grpo", steps=1)
    rec = Recorder()
    train(spec, tmp_path, reward_fn=letter_reward, callbacks=[rec])
    m = rec.metrics[0][1]
    assert m["policy/clipfrac"] == 0.0
    assert m["policy/approx_kl"] == 0.0


def test_several_epochs_and_minibatches_compute_old_logprobs(tmp_path, tiny_model_path):
    # First minibatch of the first epoch: old and new agree up to float noise; later ones move away.
    spec = make_spec(
        tiny_model_path, "grpo", steps=1, epochs_per_rollout=2, minibatch_size=4, micro_batch_size=2
    )
    rec = Recorder()
    train(spec, tmp_path, reward_fn=dense_reward, callbacks=[rec])
    assert rec.metrics[0][1]["policy/approx_kl"] > 0.0


def test_no_reference_model_when_kl_coef_is_zero(tmp_path, tiny_model_path):
    trainer = Trainer(make_spec(tiny_model_path, "grpo", kl_coef=0.0), tmp_path, reward_fn=letter_reward)
    assert trainer.reference is None
    trainer.close()


def test_lora_trains_adapters_only_and_reference_is_the_same_model(tmp_path, tiny_model_path):
    spec = make_spec(
        tiny_model_path,
        "grpo",
        steps=2,
        kl_coef=0.1,
        lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
    )
    trainer = Trainer(spec, tmp_path, reward_fn=dense_reward)
    assert trainer.reference.model is None  # adapters disabled, no second copy
    before = _params(trainer.policy)
    assert before and all("lora_" in n for n in before)
    trainer.run(lambda: False)
    after = _params(trainer.policy)
    assert all(not torch.equal(before[n], after[n]) for n in before)
    trainer.close()


def test_reward_errors_fail_loudly(tmp_path, tiny_model_path):
    from rlcore.errors import RewardInvalid

    def nan_reward(prompts, completions, **_):
        return [float("nan")] * len(completions)

    with pytest.raises(RewardInvalid):
        train(make_spec(tiny_model_path, "grpo", steps=1), tmp_path, reward_fn=nan_reward)


def test_stop_request_writes_a_checkpoint_and_raises(tmp_path, tiny_model_path):
    from rlcore.errors import Interrupted

    calls = {"n": 0}

    def stop_after_one():
        calls["n"] += 1
        return calls["n"] > 1

    rec = Recorder()
    with pytest.raises(Interrupted):
        train(
            make_spec(tiny_model_path, "grpo", steps=5),
            tmp_path,
            reward_fn=letter_reward,
            callbacks=[rec],
            should_stop=stop_after_one,
        )
    assert rec.checkpoints[-1][0] == 1
    assert rec.ended[0] == "interrupted"
    state = json.loads((tmp_path / "checkpoints" / "step-000001" / "trainer_state.json").read_text())
    assert state["step"] == 1


def test_grpo_with_kl_in_the_reward_penalises_through_the_advantages(tmp_path, tiny_model_path):
    # kl_in="reward": the KL is subtracted from the token rewards before the group comparison (so it changes
    # the advantages), and no KL term is added to the loss.
    from rlcore.algorithms import FixedKLController

    spec = make_spec(tiny_model_path, "grpo", steps=1, kl_coef=0.5, kl_in="reward", kl_estimator="k1")
    rec = Recorder()
    trainer = Trainer(spec, tmp_path, reward_fn=dense_reward, callbacks=[rec])
    trainer.run(lambda: False)  # one update: the policy now differs from the reference
    assert "kl/mean" in rec.metrics[-1][1] and "loss/kl" not in rec.metrics[-1][1]
    rollout = trainer._rollout()
    scored = trainer._score(rollout)
    with_kl = trainer._prepare(rollout, scored.scores, scored.keep).advantages
    trainer.kl_ctl = FixedKLController(0.0)
    without_kl = trainer._prepare(rollout, scored.scores, scored.keep).advantages
    assert not torch.allclose(with_kl, without_kl)
    trainer.close()


def test_lora_checkpoint_holds_the_adapter_and_a_merged_model_on_request(tmp_path, tiny_model_path):
    base = make_spec(
        tiny_model_path, "grpo", steps=1, lora={"r": 4, "alpha": 8, "target_modules": ["q_proj"]}
    )
    model = {**base.model.model_dump(mode="json"), "merge_lora_on_save": True}
    spec = JobSpec.model_validate({**base.model_dump(mode="json"), "model": model})
    result = train(spec, tmp_path, reward_fn=dense_reward)
    final = tmp_path / "checkpoints" / "step-000001"
    assert result.last_checkpoint == str(final)
    assert (final / "model" / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(final / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_adaptive_kl_controller_moves_the_coefficient_and_resumes_with_it(tmp_path, tiny_model_path):
    # PPO with kl_target: after each step the coefficient follows the measured KL (Ziegler et al. 2019);
    # the checkpoint carries it. Step 1 measures KL 0 (the policy is the reference): below the target, the
    # coefficient shrinks; step 2 measures a KL far above 1e-6: it grows.
    spec = make_spec(tiny_model_path, "ppo", steps=2, kl_coef=0.2, kl_target=1e-6, kl_horizon=100)
    rec = Recorder()
    train(spec, tmp_path, reward_fn=dense_reward, callbacks=[rec])
    coefs = [m["kl/coef"] for _, m in rec.metrics]
    assert coefs[0] == 0.2 and coefs[1] < coefs[0]
    state = json.loads((tmp_path / "checkpoints" / "step-000002" / "trainer_state.json").read_text())
    assert state["kl"]["value"] > coefs[1]


def test_a_job_scored_by_graders_reports_each_component_in_metrics_and_samples(tmp_path, tiny_model_path):
    """No server, no function: the spec's graders score the step; each is a metric and a sample field."""
    base = make_spec(tiny_model_path, steps=1, samples_per_step=8).model_dump(mode="json", by_alias=True)
    del base["reward"]
    base["rewards"] = [
        {"type": "string_check", "name": "has_a", "operation": "like", "weight": 2.0},
        {"type": "length", "name": "short", "target": 4, "weight": 0.5},
    ]
    spec = JobSpec.model_validate(base)
    rec = Recorder()
    with_tokens = Trainer(spec, tmp_path, callbacks=[rec])
    try:
        with_tokens.run(lambda: False)
        tokenizer = with_tokens.tokenizer
    finally:
        with_tokens.close()
    _, metrics = rec.metrics[0]
    for name in ("has_a", "short"):
        assert {f"reward/{name}/mean", f"reward/{name}/std"} <= set(metrics)
    _, samples = rec.samples[0]
    assert len(samples) == 8
    for s in samples:
        assert set(s["components"]) == {"has_a", "short"}
        assert s["components"]["has_a"] == float("a" in s["completion"].strip())
        n = len(tokenizer.encode(s["completion"], add_special_tokens=False))  # the job's own tokens
        assert s["components"]["short"] == pytest.approx(-min(1.0, abs(n - 4) / 4))
        assert s["reward"] == pytest.approx(2.0 * s["components"]["has_a"] + 0.5 * s["components"]["short"])
    means = [sum(s["components"][k] for s in samples) / 8 for k in ("has_a", "short")]
    # samples_per_step covers the whole batch here (2 prompts x 4), so the means are over the same items.
    assert [metrics["reward/has_a/mean"], metrics["reward/short/mean"]] == pytest.approx(means)
