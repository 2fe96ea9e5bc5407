"""Run under `accelerate launch --cpu --num_processes 2`: a few GRPO steps, then each rank writes a digest
of its weights so the test can check that data-parallel ranks stayed identical."""

import hashlib
import sys
from pathlib import Path

import torch

from rlcore.trainer import Trainer
from tests.rlcore.helpers import letter_reward, make_spec

model_path, out = sys.argv[1], Path(sys.argv[2])
spec = make_spec(model_path, "grpo", steps=3, prompts_per_step=2, group_size=4, kl_coef=0.05)
trainer = Trainer(spec, out / "run", reward_fn=letter_reward)
policy = trainer.acc.unwrap_model(trainer.policy)
initial = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in policy.parameters())).hexdigest()
trainer.run(lambda: False)
h = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in policy.parameters())).hexdigest()
(out / f"rank{trainer.rank}.txt").write_text(f"{trainer.world} {initial} {h}")
trainer.close()
assert torch.distributed.is_initialized()
