"""Run under `accelerate launch --multi_gpu --num_processes 2` (or as one plain process, the reference):
a few steps of ``case`` with ``resources.strategy`` fsdp (two ranks) or ddp (one process), then rank 0 saves
the policy's (and critic's) full weights to ``out/weights.pt`` and each rank writes ``out/rankR.json`` with
what it held (its parameters' local elements, the world size, its peak RSS).

Cases: grpo (the equivalence run: every rank samples the whole global batch with one seed per step and
keeps its share, so one process and two ranks train on the same samples), ppo, ppo-shared, lora (with
gradient checkpointing), ppo-lora, grpo-eval (an uneven held-out split), resume-a (4 steps), resume-b (2
steps, stopped with a checkpoint, then a new trainer resumes to 4).
"""

import json
import resource
import sys
from pathlib import Path

import torch

import rlcore.rollout
from rlcore import distributed as dist
from rlcore.errors import Interrupted
from rlcore.rollout import Rollout, generate
from rlcore.spec import JobSpec
from rlcore.trainer import Trainer
from tests.rlcore.helpers import dense_reward, letter_reward
from tests.support.specs import PROMPTS, letter_spec

model_path, out, case, strategy = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
out.mkdir(parents=True, exist_ok=True)
# Both runs take Hugging Face's forward (the CPU fast path covers unsharded models only), so that the only
# difference between them is the sharding.
rlcore.rollout.lean_forward_supported = lambda *a, **k: False

hp = dict(
    steps=3,
    prompts_per_step=2,
    group_size=4,
    max_new_tokens=8,
    learning_rate=1e-3,
    checkpoint_every=0,
    seed=1,
    loss_agg="seq_mean_token_mean",  # the mean over sequences is the same whichever rank holds them
    kl_coef=0.05,
)
lora = None
merge = False
reward = letter_reward
algorithm = "grpo"
if case == "grpo":  # two micro-batches per rank: the first backward skips FSDP's gradient reduce-scatter
    hp["micro_batch_size"] = 2
if case.startswith("ppo"):
    algorithm, reward = "ppo", dense_reward
    hp.update(group_size=1, prompts_per_step=4, value_model="shared" if case == "ppo-shared" else "separate")
if case == "ppo-lora":
    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
if case == "lora":
    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    merge = True  # and a merged model beside the adapter, built on rank 0 from the written adapter
if case.startswith("resume"):
    hp.update(steps=4)
if case == "lora":  # and gradient checkpointing, under sharding
    hp.update(gradient_checkpointing=True)
spec_dict = letter_spec(
    {"name_or_path": model_path, "lora": lora, "merge_lora_on_save": merge},
    algorithm=algorithm,
    prompts=PROMPTS,
    gpus=2,
    **hp,
)
spec_dict["resources"]["strategy"] = strategy
if case == "grpo-eval":  # 5 prompts over 2 ranks: 3 and 2, so unequal generate() calls unless synced
    rows = [{"prompt": p} for p in ("Tell me:", "Reply now:", "Once more:", "Again:", "Last:")]
    spec_dict["evaluation"] = {"dataset": {"rows": rows}, "every_steps": 2, "samples_per_prompt": 2}
spec = JobSpec.model_validate(spec_dict)


def global_rollout(self) -> Rollout:
    """Every rank samples the whole global batch (same seed, same weights: the same samples) and keeps its
    share, so that the batch of a step does not depend on the number of ranks."""
    hp = self.hp
    idx = self.cursor.next_indices(hp.prompts_per_step)
    per = hp.prompts_per_step // self.world
    self.local_rows = [self.rows[i] for i in idx[self.rank * per : (self.rank + 1) * per]]
    prompts = [self.prompts[i] for i in idx for _ in range(hp.group_size)]
    torch.manual_seed(1000 + self.state.step)
    r = generate(
        self.acc.unwrap_model(self.policy),
        self.tokenizer,
        prompts,
        max_new_tokens=hp.max_new_tokens,
        max_prompt_tokens=hp.max_prompt_tokens,
        temperature=hp.temperature,
        top_p=0.999,  # Hugging Face's generate() on both: the fast sampler does not run sharded models
    )
    rows = slice(self.rank * per * hp.group_size, (self.rank + 1) * per * hp.group_size)
    return Rollout(
        r.input_ids[rows],
        r.attention_mask[rows],
        r.position_ids[rows],
        r.response_mask[rows],
        r.completions[rows],
        r.prompts[rows],
        r.truncated[rows],
    )


Trainer._rollout = global_rollout


def full_weights(trainer) -> dict[str, torch.Tensor]:
    weights = {}
    for name, model in (("policy", trainer.policy), ("value", trainer.value)):
        if model is None:
            continue
        sd = dist.full_state_dict(model) if trainer.fsdp else trainer.acc.unwrap_model(model).state_dict()
        weights.update({f"{name}.{k}": v.detach().clone() for k, v in sd.items()})
    return weights


def report(trainer, **extra) -> None:
    local = sum(
        p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in trainer.policy.parameters()
    )
    info = {
        "world": trainer.world,
        "fsdp": trainer.fsdp,
        "local_numel": local,
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        **extra,
    }
    (out / f"rank{trainer.rank}.json").write_text(json.dumps(info))


run_dir = out / "run"
if case == "resume-b":
    first = Trainer(spec, run_dir, reward_fn=reward, resume=False)
    try:
        first.run(lambda: first.state.step >= 2)
    except Interrupted:
        pass
    first.close()
    del first
trainer = Trainer(spec, run_dir, reward_fn=reward, resume=case == "resume-b")
start = trainer.state.step
result = trainer.run(lambda: False)
weights = full_weights(trainer)
if trainer.rank == 0:
    torch.save(weights, out / "weights.pt")
report(trainer, resumed_from=start, last_checkpoint=result.last_checkpoint)
trainer.close()
dist.end_process_group()  # as the worker's training process does: no rank exits with the group up
