"""Scoring a rollout: reward items from the rows behind it, the reward log that makes a replayed step reuse
its rewards, and per-sample records. Training steps and evaluations go through this one path, so an
evaluation is scored with the job's own reward (same endpoint or graders, protocol and retries).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlcore.rewards.base import RewardBatchResult, RewardItem, RewardScorer, component_metrics


@dataclass
class ScoredRollout:
    """The rewards of a rollout's B samples (laid out as consecutive groups of G)."""

    scores: torch.Tensor  # (B,) float32; a skipped sample holds its group's mean of the others
    keep: torch.Tensor  # (B,) bool: False for a sample skipped under on_error="skip_sample"
    items: list[RewardItem]
    result: RewardBatchResult
    metrics: dict[str, float]  # reward_endpoint/... and reward/<component>/{mean,std} over every rank

    def samples(self, n: int, split: str = "train") -> list[dict[str, Any]]:
        """Records of the first ``n`` samples, as ``Callback.on_samples`` delivers them."""
        items, result = self.items, self.result
        return [
            {
                "index": i,
                "group": items[i].group,
                "prompt": items[i].prompt,
                "completion": items[i].completion,
                "reward": result.rewards[i],
                "label": items[i].label,
                "error": result.errors[i],
                "components": result.components[i],
                "split": split,
            }
            for i in range(min(n, len(items)))
        ]


def reward_items(
    prefix: str,
    prompts: Sequence[str],
    completions: Sequence[str],
    rows: Sequence[dict[str, Any]],
    groups: Sequence[int],
    truncated: Sequence[bool],
) -> list[RewardItem]:
    """One item per completion, G = len(completions) / len(rows) consecutive ones per row; ``groups`` numbers
    the rows (across ranks), ids read ``<prefix>-<group>-<i>``; ``truncated``: which completions were cut at
    max_new_tokens (``finish_reason`` "length") rather than ended by the model ("stop")."""
    G = len(completions) // max(1, len(rows))
    expanded = [r for r in rows for _ in range(G)]
    return [
        RewardItem(
            id=f"{prefix}-{groups[i // G]}-{i % G}",
            prompt=p,
            completion=c,
            group=groups[i // G],
            label=row.get("label"),
            metadata=row.get("metadata") or {},
            finish_reason="length" if cut else "stop",
        )
        for i, (p, c, row, cut) in enumerate(zip(prompts, completions, expanded, truncated, strict=True))
    ]


def score_items(
    scorer: RewardScorer,
    reward_log: RewardLog,
    step: int,
    items: list[RewardItem],
    group_size: int,
    gather=None,
) -> ScoredRollout:
    """Score ``items`` (reusing the log's record of ``step`` when the same completions come back).

    ``gather`` collects a list from every rank (data parallelism) for the component metrics."""
    result = reward_log.lookup(step, items)
    replayed = result is not None
    if result is None:
        result = scorer.score(step, items)
        reward_log.record(step, items, result)
    keep = torch.tensor([r is not None for r in result.rewards], dtype=torch.bool)
    raw = torch.tensor([r if r is not None else float("nan") for r in result.rewards], dtype=torch.float32)
    # A skipped sample takes its group's mean so that it moves no advantage; its tokens are masked out.
    groups = raw.view(-1, group_size)
    fill = torch.nan_to_num(torch.nanmean(groups, dim=1, keepdim=True), nan=0.0).expand_as(groups)
    scores = torch.where(torch.isnan(groups), fill, groups).reshape(-1)
    components = list(result.components)
    if gather is not None:
        components = gather(components)
    metrics = {**result.metrics, **component_metrics(components)}
    if replayed:
        metrics["reward_endpoint/replayed"] = 1.0
    return ScoredRollout(scores, keep, items, result, metrics)


class RewardLog:
    """Rewards received per step, so a step replayed after a crash reuses them instead of asking again.

    A record is reused only when the replayed step produced the very same prompts and completions.
    """

    def __init__(self, directory: Path, rank: int, kind: str = "step"):
        self.directory = directory
        self.rank = rank
        self.kind = kind  # "step" (training) or "eval": the two never share a record

    def _path(self, step: int) -> Path:
        return self.directory / f"{self.kind}-{step:06d}.rank{self.rank}.json"

    @staticmethod
    def _digest(items) -> str:
        h = hashlib.sha256()
        for it in items:
            h.update(json.dumps([it.id, it.prompt, it.completion]).encode())
        return h.hexdigest()

    def lookup(self, step: int, items):
        path = self._path(step)
        if not path.exists():
            return None
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return None
        if rec.get("digest") != self._digest(items):
            return None
        return RewardBatchResult(
            rewards=rec["rewards"], errors=rec["errors"], components=rec["components"], metrics={}
        )

    def record(self, step: int, items, result) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self._path(step).with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "digest": self._digest(items),
                    "rewards": result.rewards,
                    "errors": result.errors,
                    "components": result.components,
                }
            ),
            encoding="utf-8",
        )
        os.replace(tmp, self._path(step))
        # Older records are never needed again once a checkpoint past them exists; keep the last few.
        for old in sorted(self.directory.glob(f"{self.kind}-*.rank{self.rank}.json"))[:-64]:
            old.unlink(missing_ok=True)
