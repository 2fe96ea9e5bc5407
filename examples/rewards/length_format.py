"""Length-and-format reward: completions near a target length, on one line.

``length`` is 1 at the target length and falls linearly to 0 at twice (or zero times) the target;
``format`` is 1 when the completion has no newline. The reward is their product, so a multi-line answer
scores 0 whatever its length. The target is ``metadata.target_length`` or ``RLFT_TARGET_LENGTH``
(default 12 characters). Run from the repository root::

    uvicorn examples.rewards.length_format:app --port 8001
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

app = FastAPI(title="rlft example reward: length and format")


class Item(BaseModel):
    id: str
    prompt: str = ""
    completion: str
    group: int = 0
    label: Any = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class RewardRequest(BaseModel):
    """rlft.reward.v1: one batch of items."""

    protocol: str = "rlft.reward.v1"
    job_id: str | None = None
    step: int | None = None
    request_id: str | None = None
    items: list[Item]


def target_length(metadata: dict[str, Any]) -> int:
    value = metadata.get("target_length") or os.environ.get("RLFT_TARGET_LENGTH") or 12
    return max(1, int(value))


def judge(completion: str, target: int) -> dict[str, float]:
    length = max(0.0, 1.0 - abs(len(completion) - target) / target)
    return {"length": length, "format": float("\n" not in completion)}


@app.post("/")
async def score(request: RewardRequest) -> dict[str, Any]:
    answers = []
    for item in request.items:
        parts = judge(item.completion, target_length(item.metadata))
        answers.append({"id": item.id, "reward": parts["length"] * parts["format"], "components": parts})
    return {"items": answers}
