"""Whether a completion stopped by itself reaches the reward (issue 15): each item carries ``finish_reason``
("stop" or "length"), HTTP endpoints and Python rewards see it, and a rewards entry's ``truncated_score``
replaces its value for a completion cut at max_new_tokens."""

from __future__ import annotations

import pytest

from rlcore.rewards import make_job_scorer
from rlcore.rewards.base import RewardItem
from rlcore.rewards.protocol import PROTOCOL_V1, request_body
from rlcore.spec import JobSpec
from rlcore.trainer import train
from tests.rlcore.helpers import make_spec

CORRECT = {"name": "correct", "type": "number", "extract": "answer_line", "reference": "{{label}}"}
STOP_REWARDS = [
    {**CORRECT, "weight": 0.8, "truncated_score": 0.0},
    {"name": "format", "type": "regex", "pattern": "Answer:", "weight": 0.2},
]


def _items(*finish: str) -> list[RewardItem]:
    return [
        RewardItem(id=f"1-0-{i}", prompt="2+2?", completion="Answer: 4", group=0, label="4", finish_reason=f)
        for i, f in enumerate(finish)
    ]


def _spec(rewards: list[dict]) -> JobSpec:
    data = make_spec("/m").model_dump(mode="json")
    data["reward"] = None
    data["rewards"] = rewards
    return JobSpec.model_validate(data)


def test_truncated_score_replaces_the_value_of_a_cut_completion_only() -> None:
    scorer = make_job_scorer(_spec(STOP_REWARDS))
    try:
        result = scorer.score(1, _items("stop", "length"))
    finally:
        scorer.close()
    assert result.rewards == pytest.approx([1.0, 0.2])  # the cut reply keeps its format part only
    assert result.components[0] == {"correct": 1.0, "format": 1.0}
    assert result.components[1] == {"correct": 0.0, "format": 1.0}


def test_without_truncated_score_a_cut_completion_is_graded_as_before() -> None:
    scorer = make_job_scorer(_spec([CORRECT]))
    try:
        assert scorer.score(1, _items("stop", "length")).rewards == [1.0, 1.0]
    finally:
        scorer.close()


def test_a_truncated_score_out_of_range_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="truncated_score"):
        _spec([{**CORRECT, "truncated_score": 1e9}])


def test_http_items_carry_finish_reason() -> None:
    body = request_body(PROTOCOL_V1, "job", 1, "req", _items("length"))
    assert body["items"][0]["finish_reason"] == "length"


def test_the_trainer_tells_the_reward_how_each_completion_ended(tmp_path, tiny_model_path) -> None:
    seen: list[tuple[str, str]] = []

    def reward(prompts, completions, *, finish_reasons, **fields):
        seen.extend(zip(completions, finish_reasons, strict=True))
        return [0.0] * len(completions)

    spec = make_spec(tiny_model_path, steps=2, max_new_tokens=3, group_size=4, kl_coef=0.0)
    result = train(spec, tmp_path / "run", reward_fn=reward)
    assert result.status == "succeeded" and len(seen) == 16
    assert {f for _, f in seen} <= {"stop", "length"}
    # A random model over 259 tokens almost never emits its EOS within 3 tokens: most replies are cut.
    assert sum(f == "length" for _, f in seen) >= 12


def test_the_smollm2_example_rewards_are_the_benchmarks_and_score_as_documented() -> None:
    """examples/specs/grpo_arithmetic_smollm2.yaml and benchmarks/real_task.py share one reward design."""
    from pathlib import Path

    import yaml

    from benchmarks.real_task import REWARDS

    example = Path(__file__).parents[2] / "examples/specs/grpo_arithmetic_smollm2.yaml"
    assert yaml.safe_load(example.read_text())["rewards"] == REWARDS
    scorer = make_job_scorer(_spec(REWARDS))
    replies = ["12 + 30 = 42\nAnswer: 42", "Answer: 42\nAnswer: 43", "Answer: 41", "12 + 30 = 42"]
    replies.append("Answer: 42")
    finish = ["stop", "stop", "stop", "stop", "length"]
    items = [
        RewardItem(id=f"1-0-{i}", prompt="p", completion=c, group=0, label="42", finish_reason=f)
        for i, (c, f) in enumerate(zip(replies, finish, strict=True))
    ]
    try:
        rewards = scorer.score(1, items).rewards
    finally:
        scorer.close()
    # right and clean; two answer lines (the last one wrong); one wrong answer; no answer; cut at the limit
    assert rewards == pytest.approx([1.0, 0.0, 0.2, 0.0, 0.0])
