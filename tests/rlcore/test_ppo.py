"""PPO's behaviours on the tiny model: clipping that acts under the defaults, critic warm-up,
the shared critic and the LoRA critic, the entropy bonus, and checkpoints of each critic."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from rlcore.callbacks import Callback
from rlcore.critic import VALUE_HEAD_FILE, SeparateCritic, SharedCritic
from rlcore.trainer import Trainer
from tests.rlcore.helpers import dense_reward, make_spec

LORA = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}


class Metrics(Callback):
    def __init__(self, on_step=None):
        self.steps: list[dict[str, float]] = []
        self.on_step = on_step

    def on_step_end(self, step, metrics):
        self.steps.append(metrics)
        if self.on_step:
            self.on_step(step)


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _changed(before: dict, after: dict) -> set[str]:
    return {n for n in before if not torch.equal(before[n], after[n])}


def _run(spec, tmp_path, **kw):
    rec = Metrics(kw.pop("on_step", None))
    trainer = Trainer(spec, tmp_path, reward_fn=dense_reward, callbacks=[rec], **kw)
    return trainer, rec


def test_defaults_make_ppo_clip_and_value_clip_act(tmp_path, tiny_model_path):
    spec = make_spec(tiny_model_path, "ppo", steps=2)
    hp = spec.hyperparameters
    assert (hp.epochs_per_rollout, hp.minibatch_size, hp.reward_norm) == (4, None, "running")
    trainer, rec = _run(spec, tmp_path)
    trainer.run(lambda: False)
    trainer.close()
    first = rec.steps[0]
    # Old log-probs come from before the first update, so later epochs see ratios != 1.
    assert first["policy/clipfrac"] > 0 and first["policy/approx_kl"] > 0
    assert first["value/clipfrac"] > 0
    assert first["value/mean"] == 0.0  # the zero-initialised head: V = 0 on the first rollout
    assert "loss/entropy" not in first  # entropy_coef 0: reported, not optimised
    assert first["policy/entropy"] > 0


def test_entropy_bonus_is_in_the_loss_and_reported(tmp_path, tiny_model_path):
    trainer, rec = _run(make_spec(tiny_model_path, "ppo", steps=1, entropy_coef=0.05), tmp_path)
    trainer.run(lambda: False)
    trainer.close()
    m = rec.steps[0]
    assert m["loss/entropy"] < 0  # -coef x mean entropy, averaged over the minibatches
    assert m["loss/entropy"] == pytest.approx(-0.05 * m["policy/entropy"], rel=0.05)


@pytest.mark.parametrize("value_model", ["separate", "shared"])
def test_critic_warmup_moves_the_critic_only(tmp_path, tiny_model_path, value_model):
    spec = make_spec(tiny_model_path, "ppo", steps=3, critic_warmup_steps=2, value_model=value_model)
    snapshots = {}
    trainer, rec = _run(spec, tmp_path, on_step=lambda s: snapshots.setdefault(s, _params(trainer.policy)))
    policy0, value0 = _params(trainer.policy), _params(trainer.value)
    trainer.run(lambda: False)
    assert not _changed(policy0, snapshots[2]), "the policy moved during critic warm-up"
    assert _changed(value0, _params(trainer.value)) == set(value0), "every critic parameter learns"
    assert _changed(snapshots[2], _params(trainer.policy)), "the policy moves once warm-up is over"
    assert [("loss/policy" in m) for m in rec.steps] == [False, False, True]
    assert rec.steps[0]["optim/grad_norm"] == 0.0 and rec.steps[0]["optim/value_grad_norm"] > 0
    trainer.close()


def _optimizer_params(trainer):
    return [p for g in trainer.optimizer.param_groups for p in g["params"]]


def test_shared_critic_is_a_head_on_the_policy_backbone(tmp_path, tiny_model_path):
    spec = make_spec(tiny_model_path, "ppo", steps=2, value_model="shared")
    trainer, rec = _run(spec, tmp_path)
    assert isinstance(trainer.value, SharedCritic)
    policy_params = [p for p in trainer.policy.parameters() if p.requires_grad]
    head = list(trainer.value.parameters())
    assert [tuple(p.shape) for p in head] == [(1, 64), (1,)]  # weight and bias: no second backbone
    optimized = _optimizer_params(trainer)
    assert len({id(p) for p in optimized}) == len(optimized) == len(policy_params) + 2
    assert {id(p) for p in optimized} == {id(p) for p in policy_params + head}
    before, head_before = _params(trainer.policy), _params(trainer.value)
    trainer.run(lambda: False)
    # The value loss reaches the backbone too (vf_coef): every policy parameter and the head move.
    assert _changed(before, _params(trainer.policy)) == set(before)
    assert _changed(head_before, _params(trainer.value)) == set(head_before)
    assert rec.steps[-1]["value/explained_variance"] != 0.0
    files = sorted(p.name for p in (tmp_path / "checkpoints/step-000002/value_model").iterdir())
    assert files == [VALUE_HEAD_FILE]
    trainer.close()


def test_lora_critic_trains_only_its_adapters_and_head_on_the_policy_weights(tmp_path, tiny_model_path):
    spec = make_spec(tiny_model_path, "ppo", lora=LORA, steps=2)
    trainer, _ = _run(spec, tmp_path)
    assert isinstance(trainer.value, SeparateCritic)
    trainable = {n for n, p in trainer.value.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    # The frozen base weights are the policy's own tensors, not a second backbone.
    policy_base = {p.data_ptr() for n, p in trainer.policy.named_parameters() if not p.requires_grad}
    critic_base = [p for p in trainer.value.parameters() if not p.requires_grad]
    assert critic_base and all(p.data_ptr() in policy_base for p in critic_base)
    value_group = trainer.optimizer.param_groups[1]["params"]
    assert len(value_group) == len(trainable)
    before, frozen = _params(trainer.value), [p.detach().clone() for p in critic_base]
    trainer.run(lambda: False)
    assert _changed(before, _params(trainer.value)) == set(before)
    assert all(torch.equal(a, b) for a, b in zip(frozen, critic_base, strict=True))
    saved = {p.name for p in (tmp_path / "checkpoints/step-000002/value_model").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", VALUE_HEAD_FILE} <= saved
    assert "model.safetensors" not in saved  # adapters and a head, not a backbone
    trainer.close()


@pytest.mark.parametrize("variant", ["shared", "lora"])
def test_each_critic_resumes_from_its_checkpoint(tmp_path, tiny_model_path, variant):
    kw = {"value_model": "shared"} if variant == "shared" else {"lora": LORA}
    spec = make_spec(tiny_model_path, "ppo", steps=2, checkpoint_every=1, **kw)
    first, _ = _run(spec, tmp_path)
    first.run(lambda: False)
    head = load_file(str(tmp_path / "checkpoints/step-000002/value_model" / VALUE_HEAD_FILE))
    first.close()
    longer = make_spec(tiny_model_path, "ppo", steps=3, checkpoint_every=1, **kw)
    resumed, _ = _run(longer, tmp_path)  # resumes from step 2
    assert resumed.state.step == 2
    loaded = resumed.value.head.state_dict()
    assert all(torch.equal(loaded[k], head[k]) for k in head)
    resumed.run(lambda: False)
    assert resumed.state.step == 3
    resumed.close()
