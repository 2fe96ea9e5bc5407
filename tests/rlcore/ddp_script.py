"""Run under `accelerate launch --cpu --num_processes 2`: a few GRPO or PPO steps (``case``: grpo, ppo-shared,
ppo-lora), then each rank writes a digest of its trainable weights (policy and critic) so the test can check
that data-parallel ranks stayed identical."""

import hashlib
import sys
from pathlib import Path

import torch

from rlcore.trainer import Trainer
from tests.rlcore.helpers import dense_reward, letter_reward, make_spec

model_path, out, case = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
if case == "grpo":
    spec = make_spec(model_path, "grpo", steps=3, prompts_per_step=2, group_size=4, kl_coef=0.05)
    reward = letter_reward
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
trainer.close()
assert torch.distributed.is_initialized()
