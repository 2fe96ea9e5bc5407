"""Prompt data: loading rows, rendering prompts, and a resumable cursor over them."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlcore.errors import DatasetError
from rlcore.jsonl import read_rows
from rlcore.spec import DatasetSpec


def load_rows(dataset: DatasetSpec) -> list[dict[str, Any]]:
    """The dataset's rows, validated. ``file_id`` datasets are resolved to ``rows`` by the service."""
    if dataset.rows is not None:
        return list(dataset.rows)
    if dataset.file_id is not None:
        raise DatasetError(
            f"dataset.file_id={dataset.file_id!r} names a file uploaded to the service; a local run needs "
            "dataset.path (a JSONL file) or dataset.rows"
        )
    return read_jsonl(Path(dataset.path))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DatasetError(f"dataset.path {str(path)!r} does not exist or is not a file")
    try:
        with path.open("rb") as f:
            return read_rows(f)
    except ValueError as e:
        raise DatasetError(f"{path}: {e}") from None


def render_prompt(row: dict[str, Any], tokenizer) -> str:
    """A row's prompt text: ``prompt`` as is, or ``messages`` through the tokenizer's chat template."""
    if "prompt" in row:
        return row["prompt"]
    if not getattr(tokenizer, "chat_template", None):
        raise DatasetError("a row has 'messages' but the tokenizer has no chat template; give 'prompt' rows")
    return tokenizer.apply_chat_template(row["messages"], tokenize=False, add_generation_prompt=True)


@dataclass
class PromptCursor:
    """Walks the rows in a seeded shuffled order, epoch after epoch; its state resumes it exactly."""

    num_rows: int
    seed: int
    epoch: int = 0
    position: int = 0

    def _order(self) -> list[int]:
        order = list(range(self.num_rows))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def next_indices(self, n: int) -> list[int]:
        out: list[int] = []
        order = self._order()
        while len(out) < n:
            if self.position >= self.num_rows:
                self.epoch += 1
                self.position = 0
                order = self._order()
            take = min(n - len(out), self.num_rows - self.position)
            out.extend(order[self.position : self.position + take])
            self.position += take
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
