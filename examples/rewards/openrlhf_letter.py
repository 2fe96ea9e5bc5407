"""The letter reward in OpenRLHF's remote reward-model format (``reward.protocol: openrlhf``).

Takes ``{"query": [prompt + completion, ...], "prompts": [...], "labels": [...]}`` and answers
``{"rewards": [...], "scores": [...], "extra_logs": {...}}``, like the servers OpenRLHF's
``--remote_rm_url`` calls, at ``/`` and at ``/get_reward``. Run from the repository root::

    uvicorn examples.rewards.openrlhf_letter:app --port 8001
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

from examples.rewards.letter import delay, letter_fraction, target_letter

app = FastAPI(title="rlft example reward: letter, OpenRLHF format")


class OpenRLHFRequest(BaseModel):
    query: list[str]
    prompts: list[str] = Field(default_factory=list)
    labels: list[Any] = Field(default_factory=list)


def completion_of(query: str, prompt: str | None) -> str:
    # OpenRLHF sends prompt + completion as one string; the prompt is cut off when it was sent too.
    return query[len(prompt) :] if prompt and query.startswith(prompt) else query


@app.post("/")
@app.post("/get_reward")
async def get_reward(request: OpenRLHFRequest) -> dict[str, Any]:
    await delay()
    n = len(request.query)
    prompts = request.prompts if len(request.prompts) == n else [None] * n
    labels = request.labels if len(request.labels) == n else [None] * n
    rewards = [
        letter_fraction(completion_of(q, p), target_letter(label))
        for q, p, label in zip(request.query, prompts, labels, strict=True)
    ]
    return {"rewards": rewards, "scores": rewards, "extra_logs": {"letter_fraction": rewards}}
