"""Job specs for the letter task (reward: the share of 'a' in a completion), as the dicts a client sends."""

from __future__ import annotations

from typing import Any

PROMPTS = ("Say something:", "Write a word:", "Go:", "Answer:")


def letter_spec(
    model: str | dict[str, Any],
    reward: str | dict[str, Any] | None = None,
    *,
    algorithm: str = "grpo",
    prompts: tuple[str, ...] = ("Go:",),
    gpus: int | None = 0,
    **hyperparameters: Any,
) -> dict[str, Any]:
    """A spec whose rows ask for the letter 'a'; ``model`` and ``reward`` as a path/URL or a whole section.

    Only the hyperparameters given are set (the rest take the spec's defaults); ``gpus=None`` leaves
    the resources section out.
    """
    spec: dict[str, Any] = {
        "algorithm": algorithm,
        "model": {"name_or_path": model} if isinstance(model, str) else model,
        "dataset": {"rows": [{"prompt": p, "label": "a"} for p in prompts]},
    }
    if reward is not None:
        spec["reward"] = {"url": reward} if isinstance(reward, str) else reward
    spec["hyperparameters"] = hyperparameters
    if gpus is not None:
        spec["resources"] = {"gpus": gpus}
    return spec
