"""The prompts: ``dataset`` (inline rows, an uploaded file, or a local JSONL file) and the rule every row
meets."""

from __future__ import annotations

from typing import Any

from pydantic import (
    Field,
    model_validator,
)

from rlcore.spec.base import (
    _Frozen,
    check_json_value,
)


class DatasetSpec(_Frozen):
    """Exactly one of ``rows``, ``file_id`` or ``path``.

    A row is ``{"prompt": str, "label": any, "metadata": {...}}`` or ``{"messages": [...]}`` (rendered with
    the tokenizer's chat template).
    """

    _walked_elsewhere = frozenset({"rows"})  # validate_row walks each row

    rows: list[dict[str, Any]] | None = Field(
        None, description="Inline rows (the service takes at most 10,000; larger datasets go in a file)."
    )
    file_id: str | None = Field(
        None, max_length=64, description="A JSONL file uploaded through POST /v1/files."
    )
    path: str | None = Field(
        None, description="A local JSONL file (local runs and workers with shared disk)."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> DatasetSpec:
        given = [k for k in ("rows", "file_id", "path") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of dataset.rows, dataset.file_id or dataset.path"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.rows is not None:
            if not self.rows:
                raise ValueError("dataset.rows is empty: give at least one row")
            for i, row in enumerate(self.rows):
                validate_row(row, where=f"dataset.rows[{i}]")
        return self


def validate_row(row: Any, where: str) -> None:
    """Raise ValueError with the row's location unless it is a usable dataset row.

    Inline rows, uploaded lines and local files all pass here: text without NUL or lone surrogates,
    finite numbers, bounded nesting (see :func:`check_json_value`).
    """
    if not isinstance(row, dict):
        raise ValueError(f"{where} must be an object with a 'prompt' or 'messages' field")
    check_json_value(row, where)
    if "prompt" in row:
        if not isinstance(row["prompt"], str) or not row["prompt"]:
            raise ValueError(f"{where}.prompt must be a non-empty string")
    elif "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise ValueError(f"{where}.messages must be a non-empty list of {{role, content}} objects")
        for j, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
                raise ValueError(f"{where}.messages[{j}] must be an object with 'role' and 'content'")
    else:
        raise ValueError(f"{where} needs a 'prompt' (string) or 'messages' (chat list) field")
    if "metadata" in row and not isinstance(row["metadata"], dict):
        raise ValueError(f"{where}.metadata must be an object")
