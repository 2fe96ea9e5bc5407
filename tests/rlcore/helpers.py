"""Shared pieces of the engine tests: the tiny model, the letter reward, spec builders."""

from __future__ import annotations

from pathlib import Path

from rlcore.spec import JobSpec
from rlcore.testing import make_tiny_model
from tests.support.specs import PROMPTS, letter_spec


def letter_reward(prompts, completions, **fields):
    """The fraction of the completion's characters that are the letter 'a' (0 for an empty completion)."""
    return [c.count("a") / len(c) if c else 0.0 for c in completions]


def tiny_model(tmp_root: Path, size: str = "tiny") -> str:
    return str(make_tiny_model(tmp_root / f"model-{size}", size))


def make_spec(model: str, algorithm: str = "grpo", lora=None, **hp) -> JobSpec:
    hyper = dict(
        steps=3,
        prompts_per_step=2,
        group_size=4,
        max_new_tokens=8,
        learning_rate=1e-2,
        checkpoint_every=0,
        seed=1,
    )
    if algorithm == "ppo":
        hyper["group_size"] = 1
        hyper["prompts_per_step"] = 4
    hyper.update(hp)
    model_section = {"name_or_path": model, "lora": lora}
    return JobSpec.model_validate(
        letter_spec(model_section, algorithm=algorithm, prompts=PROMPTS, gpus=None, **hyper)
    )


def dense_reward(prompts, completions, **fields):
    """A reward that varies within every group (the fraction of characters with an even code point), so
    that a smoke test's gradients are never all zero by chance."""
    return [sum(ord(ch) % 2 == 0 for ch in c) / len(c) if c else 0.0 for c in completions]
