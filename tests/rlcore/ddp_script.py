"""Run under `accelerate launch --cpu --num_processes 2`: a few GRPO or PPO steps (``case``: grpo, grpo-eval,
ppo-shared, ppo-lora), then each rank writes a digest of its trainable weights (policy and critic) so the test
can check that data-parallel ranks stayed identical. grpo-eval also evaluates 3 held-out prompts (the ranks
split them unevenly) and writes each rank's evaluation result."""

import hashlib
import json
import sys
from pathlib import Path

import torch

from rlcore.distributed import end_process_group
from rlcore.spec import JobSpec
from rlcore.trainer import Trainer
from tests.rlcore.helpers import dense_reward, letter_reward, make_spec

model_path, out, case = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
if case in ("grpo", "grpo-eval"):
    spec = make_spec(model_path, "grpo", steps=3, prompts_per_step=2, group_size=4, kl_coef=0.05)
    reward = letter_reward
    if case == "grpo-eval":
        rows = [{"prompt": p} for p in ("Tell me:", "Reply now:", "Once more:")]
        evaluation = {
            "dataset": {"rows": rows},
            "every_steps": 2,
            "samples_per_prompt": 2,
            "temperature": 1.0,
        }
        data = spec.model_dump(mode="json", by_alias=True)
        data.pop("rewards")
        spec = JobSpec.model_validate({**data, "evaluation": evaluation})
else:  # ppo-shared: the value head on the policy's DDP-wrapped backbone; ppo-lora: a LoRA critic on the
    # policy's frozen weights, in a DDP wrapper of its own. A dense reward, so that the policy moves at once.
    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj"]} if case == "ppo-lora" else None
    value_model = "shared" if case == "ppo-shared" else "separate"
    spec = make_spec(model_path, "ppo", steps=3, kl_coef=0.05, value_model=value_model, lora=lora)
    reward = dense_reward
trainer = Trainer(spec, out / "run", reward_fn=reward)
policy = trainer.acc.unwrap_model(trainer.policy)
models = [policy] + ([trainer.acc.unwrap_model(trainer.value)] if trainer.value is not None else [])


def digest() -> str:
    tensors = [p for m in models for p in m.parameters() if p.requires_grad]
    return hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in tensors)).hexdigest()


initial = digest()
trainer.run(lambda: False)
h = digest()
(out / f"rank{trainer.rank}.txt").write_text(f"{trainer.world} {initial} {h}")
if trainer.evaluator is not None:
    result = trainer.evaluator.evaluate(policy, 3)
    groups = [s["group"] for s in result.samples]
    metrics = {k: v for k, v in result.metrics.items() if k != "eval/time_s"}
    (out / f"eval{trainer.rank}.json").write_text(json.dumps({"metrics": metrics, "groups": groups}))
trainer.close()
assert torch.distributed.is_initialized()
end_process_group()  # as the worker's training process does: no rank exits with the group up
