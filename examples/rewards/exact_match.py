"""Exact-match reward: 1.0 when the completion's last number or word equals the label, else 0.0.

Answers ``components`` ``{"format": 1.0 if the completion holds any number or word, "correct": ...}`` so
that the job's metrics show format and correctness apart. Numbers compare as numbers ("5.0" == "5").
Run from the repository root::

    uvicorn examples.rewards.exact_match:app --port 8001
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

app = FastAPI(title="rlft example reward: exact match")

ANSWER = re.compile(r"[-+]?\d+(?:\.\d+)?|\w+")


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


def last_answer(completion: str) -> str | None:
    found = ANSWER.findall(completion)
    return found[-1] if found else None


def same_answer(answer: str, label: Any) -> bool:
    expected = str(label).strip()
    try:
        return float(answer) == float(expected)
    except ValueError:
        return answer.casefold() == expected.casefold()


def judge(completion: str, label: Any) -> dict[str, float]:
    answer = last_answer(completion)
    correct = answer is not None and label is not None and same_answer(answer, label)
    return {"format": float(answer is not None), "correct": float(correct)}


@app.post("/")
async def score(request: RewardRequest) -> dict[str, Any]:
    answers = []
    for item in request.items:
        parts = judge(item.completion, item.label)
        answers.append({"id": item.id, "reward": parts["correct"], "components": parts})
    return {"items": answers}
