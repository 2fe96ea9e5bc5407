"""Letter reward: the fraction of a completion's characters that are the target letter.

The demo's reward and the end-to-end tests'. The target is the item's label when it is a single
character, else ``RLFT_LETTER`` (default "a"). ``RLFT_REWARD_DELAY_MS`` adds latency to each request
(for benchmarks). Run from the repository root::

    uvicorn examples.rewards.letter:app --port 8001
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

app = FastAPI(title="rlft example reward: letter")


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


def target_letter(label: Any) -> str:
    if isinstance(label, str) and len(label) == 1:
        return label
    return os.environ.get("RLFT_LETTER", "a")[:1] or "a"


def letter_fraction(completion: str, letter: str) -> float:
    """0.0 for an empty completion: nothing to reward."""
    return completion.count(letter) / len(completion) if completion else 0.0


async def delay() -> None:
    ms = float(os.environ.get("RLFT_REWARD_DELAY_MS", "0") or 0)
    if ms > 0:
        await asyncio.sleep(ms / 1000)


@app.post("/")
async def score(request: RewardRequest) -> dict[str, Any]:
    await delay()
    return {
        "items": [
            {"id": item.id, "reward": letter_fraction(item.completion, target_letter(item.label))}
            for item in request.items
        ]
    }
