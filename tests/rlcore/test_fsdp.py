"""``resources.strategy: fsdp`` on two CPU ranks (gloo) under `accelerate launch`, against one plain process;
and ``hyperparameters.gradient_checkpointing``.

The launched runs are tests/rlcore/fsdp_script.py; each takes about 10 s on two cores, hence ``slow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlcore import checkpoint as ckpt
from rlcore.errors import RLFTError
from rlcore.spec import JobSpec
from rlft_contracts.localproc import free_port
from tests.rlcore.helpers import dense_reward, make_spec
from tests.support.specs import PROMPTS, letter_spec

REPO = Path(__file__).resolve().parents[2]
SCRIPT = str(REPO / "tests/rlcore/fsdp_script.py")


def _run(model: str, out: Path, case: str, strategy: str = "fsdp") -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if strategy == "fsdp":
        launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
        launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        launch += ["--main_process_port", str(free_port())]  # not 29500: another run may hold it
    else:
        launch = []
    cmd = [sys.executable, *launch, SCRIPT, model, str(out), case, strategy]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = 2 if strategy == "fsdp" else 1
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.slow
def test_fsdp_ranks_hold_half_and_train_like_one_process(tmp_path, tiny_model_path):
    from transformers import AutoModelForCausalLM

    ranks = _run(tiny_model_path, tmp_path / "fsdp", "grpo")
    (single,) = _run(tiny_model_path, tmp_path / "one", "grpo", strategy="ddp")
    assert [r["world"] for r in ranks] == [2, 2] and all(r["fsdp"] for r in ranks)
    assert single["world"] == 1 and not single["fsdp"]
    total = single["local_numel"]
    assert sum(r["local_numel"] for r in ranks) == total
    assert all(abs(r["local_numel"] - total / 2) < 0.02 * total for r in ranks)  # about half each

    sharded = torch.load(tmp_path / "fsdp/weights.pt")
    one = torch.load(tmp_path / "one/weights.pt")
    base = {
        f"policy.{k}": v
        for k, v in AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict().items()
    }
    assert _max_diff(sharded, base) > 1e-4  # it trained
    assert _max_diff(sharded, one) < 1e-5  # and as one process did on the same global batch

    # The checkpoint: a Hugging Face directory of the gathered weights, and an optimizer shard per rank.
    directory = tmp_path / "fsdp/run/checkpoints/step-000003"
    manifest = ckpt.verify(directory)
    assert manifest is not None
    paths = {f["path"] for f in manifest["files"]}
    assert {"optimizer/rank-00000-of-00002.pt", "optimizer/rank-00001-of-00002.pt"} <= paths
    assert "optimizer.pt" not in paths
    config = json.loads((directory / "model/config.json").read_text())
    assert not config["architectures"][0].startswith("FSDP")
    loaded = AutoModelForCausalLM.from_pretrained(directory / "model").state_dict()
    assert _max_diff({f"policy.{k}": v for k, v in loaded.items()}, sharded) == 0.0

    # One process cannot resume a sharded optimizer: a clear error, not a missing file.
    spec = JobSpec.model_validate(letter_spec(tiny_model_path, prompts=PROMPTS, steps=4, group_size=4))
    from rlcore.trainer import Trainer

    with pytest.raises(RLFTError, match="strategy 'fsdp'"):
        Trainer(spec, tmp_path / "fsdp/run", reward_fn=dense_reward)


@pytest.mark.slow
def test_fsdp_resume_is_exact(tmp_path, tiny_model_path):
    from transformers import AutoModelForCausalLM

    _run(tiny_model_path, tmp_path / "a", "resume-a")  # 4 steps in one go
    ranks = _run(tiny_model_path, tmp_path / "b", "resume-b")  # 2 steps, stopped, resumed to 4
    assert [r["resumed_from"] for r in ranks] == [2, 2]
    assert _max_diff(torch.load(tmp_path / "a/weights.pt"), torch.load(tmp_path / "b/weights.pt")) == 0.0
    AutoModelForCausalLM.from_pretrained(tmp_path / "b/run/checkpoints/step-000002/model")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["ppo", "ppo-shared", "lora", "ppo-lora", "grpo-eval"])
def test_fsdp_runs_ppo_lora_and_evaluation(tmp_path, tiny_model_path, case):
    from peft import PeftModel
    from transformers import AutoModel, AutoModelForCausalLM

    ranks = _run(tiny_model_path, tmp_path, case)
    assert all(r["fsdp"] and r["world"] == 2 for r in ranks)
    weights = torch.load(tmp_path / "weights.pt")
    directory = Path(ranks[0]["last_checkpoint"])
    assert ckpt.verify(directory) is not None
    if "lora" in case:  # the adapter, gathered, loads on its base and holds the trained weights
        model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny_model_path), directory / "model"
        )
        lora = {f"policy.{k}": v for k, v in model.state_dict().items() if "lora_" in k}
        assert lora and _max_diff(lora, {k: weights[k] for k in lora}) == 0.0
        assert any(v.abs().max() > 0 for k, v in lora.items() if "lora_B" in k)  # B starts at zero: trained
        if case == "lora":  # merge_lora_on_save: the merged model equals base + adapter merged here
            merged = AutoModelForCausalLM.from_pretrained(directory / "merged").state_dict()
            assert _max_diff(merged, model.merge_and_unload().state_dict()) < 1e-6
    else:
        loaded = AutoModelForCausalLM.from_pretrained(directory / "model").state_dict()
        policy = {k: v for k, v in weights.items() if k.startswith("policy.")}
        assert _max_diff({f"policy.{k}": v for k, v in loaded.items()}, policy) == 0.0
    if case == "ppo":  # the critic's backbone as a Hugging Face directory, its head beside it
        backbone = AutoModel.from_pretrained(directory / "value_model").state_dict()
        gathered = {
            k[len("value.backbone.") :]: v for k, v in weights.items() if k.startswith("value.backbone.")
        }
        assert _max_diff(backbone, gathered) == 0.0
    if case.startswith("ppo"):
        from safetensors.torch import load_file

        head = load_file(str(directory / "value_model/value_head.safetensors"))
        assert torch.equal(head["linear.weight"], weights["value.head.linear.weight"])
        assert head["linear.weight"].abs().max() > 0  # it starts at zero: the critic learned


def _gradients(tmp_path: Path, model: str, checkpointing: bool) -> tuple[dict[str, torch.Tensor], int]:
    """One update's gradients of a fixed rollout, and the bytes autograd kept for the backward pass."""
    from rlcore.trainer import Trainer

    spec = make_spec(model, "grpo", steps=1, kl_coef=0.05, gradient_checkpointing=checkpointing)
    torch.manual_seed(0)
    trainer = Trainer(spec, tmp_path / f"gc-{checkpointing}", reward_fn=dense_reward, resume=False)
    torch.manual_seed(0)
    rollout = trainer._rollout()
    scored = trainer._score(rollout)
    batch = trainer._prepare(rollout, scored.scores, scored.keep)
    trainer.policy.train()
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = trainer.updater._micro_loss(batch, torch.arange(len(batch.mask)), 0, 0.05)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.policy.named_parameters() if p.grad is not None}
    trainer.close()
    return grads, saved[0]


def test_gradient_checkpointing_gives_the_same_gradients_keeping_less(tmp_path, tiny_model_path):
    plain, kept_plain = _gradients(tmp_path, tiny_model_path, False)
    checkpointed, kept_checkpointed = _gradients(tmp_path, tiny_model_path, True)
    assert set(plain) == set(checkpointed) and plain
    assert max((plain[k] - checkpointed[k]).abs().max().item() for k in plain) < 1e-6
    assert max(g.abs().max().item() for g in plain.values()) > 1e-4  # gradients that mean something
    assert kept_checkpointed < kept_plain / 2  # activations of the layers are recomputed, not kept
