"""Exact resume: a run stopped at step k and resumed ends bitwise equal to an uninterrupted run."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file

from rlcore import checkpoint as ckpt
from rlcore.errors import Interrupted
from rlcore.trainer import train
from tests.rlcore.helpers import dense_reward, letter_reward, make_spec


def _weights(run_dir, step):
    return load_file(str(run_dir / "checkpoints" / f"step-{step:06d}" / "model" / "model.safetensors"))


@pytest.mark.parametrize("algorithm, critic", [("grpo", None), ("ppo", "separate"), ("ppo", "shared")])
def test_stopped_and_resumed_run_is_bitwise_identical(tmp_path, tiny_model_path, algorithm, critic):
    extra = {"value_model": critic} if critic else {}
    spec = make_spec(tiny_model_path, algorithm, steps=4, checkpoint_every=2, kl_coef=0.05, **extra)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(spec, straight, reward_fn=dense_reward)

    calls = {"n": 0}

    def stop_at_two():
        calls["n"] += 1
        return calls["n"] > 2

    with pytest.raises(Interrupted):
        train(spec, resumed, reward_fn=dense_reward, should_stop=stop_at_two)
    assert [p.name for p in ckpt.list_checkpoints(resumed)] == ["step-000002"]
    result = train(spec, resumed, reward_fn=dense_reward)
    assert result.step == 4
    a, b = _weights(straight, 4), _weights(resumed, 4)
    assert a.keys() == b.keys()
    different = [k for k in a if not (a[k] == b[k]).all()]
    assert not different, f"tensors that differ after resume: {different}"
    if algorithm == "ppo":
        va = load_file(str(straight / "checkpoints/step-000004/value_model/value_head.safetensors"))
        vb = load_file(str(resumed / "checkpoints/step-000004/value_model/value_head.safetensors"))
        assert all((va[k] == vb[k]).all() for k in va)
        # The running reward statistics (reward_norm="running", PPO's default) continue bit for bit:
        # [count, mean, M2] over 4 steps x 4 samples (the dense reward is never constant: M2 > 0).
        sa, sb = (
            json.loads((d / "checkpoints/step-000004/trainer_state.json").read_text())
            for d in (straight, resumed)
        )
        assert sa["reward_moments"] == sb["reward_moments"] and sa["reward_moments"][0] == 16.0
        assert sa["reward_moments"][2] > 0


def test_resume_skips_a_checkpoint_that_does_not_verify(tmp_path, tiny_model_path):
    spec = make_spec(tiny_model_path, "grpo", steps=3, checkpoint_every=1, keep_checkpoints=5)
    train(spec, tmp_path, reward_fn=letter_reward)
    # Corrupt the newest one (step 3): resume must pick step 2.
    newest = tmp_path / "checkpoints" / "step-000003"
    (newest / "model" / "model.safetensors").write_bytes(b"garbage")
    found, broken = ckpt.latest_valid(tmp_path)
    assert found.name == "step-000002" and [b.name for b in broken] == ["step-000003"]
    events = []

    from rlcore.callbacks import Callback

    class Events(Callback):
        def on_event(self, level, message, data=None):
            events.append((level, message))

    result = train(spec, tmp_path, reward_fn=letter_reward, callbacks=[Events()])
    assert result.step == 3
    assert any("step-000003" in m and lvl == "warning" for lvl, m in events)
    assert any("resumed from checkpoint step-000002" in m for _, m in events)


def test_checkpoints_are_atomic_and_pruned(tmp_path, tiny_model_path):
    spec = make_spec(tiny_model_path, "grpo", steps=4, checkpoint_every=1, keep_checkpoints=2)
    train(spec, tmp_path, reward_fn=letter_reward)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ["step-000004", "step-000003"]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    manifest = ckpt.verify(tmp_path / "checkpoints" / "step-000004")
    paths = {f["path"] for f in manifest["files"]}
    assert {"model/config.json", "model/model.safetensors", "optimizer.pt", "trainer_state.json"} <= paths
    # A half-written directory (no manifest) is never taken for a checkpoint.
    half = tmp_path / "checkpoints" / "step-000009"
    shutil.copytree(tmp_path / "checkpoints" / "step-000004", half)
    (half / "manifest.json").unlink()
    assert ckpt.latest_valid(tmp_path)[0].name == "step-000004"
