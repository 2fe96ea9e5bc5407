"""JSONL datasets, one row a line: the one reader and validator for every way a dataset arrives.

An upload (``POST /v1/files``), a file on the service machine (``dataset.path`` in dev mode), an uploaded
file read back at the claim, and a local run's ``dataset.path`` all go through ``parse_row``: UTF-8,
JSON, bounded nesting, a usable row (``rlcore.spec.validate_row``). Blank lines are skipped. Errors are
``ValueError``s naming the line (``line 3 is not valid JSON: ...``); each caller says where the file was.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from rlcore.spec import MAX_JSON_DEPTH, validate_row


def parse_row(raw: bytes | str, n: int) -> dict[str, Any]:
    """Line ``n`` (from 1) as a dataset row, or ``ValueError`` saying what is wrong with it."""
    try:
        row = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except UnicodeDecodeError:
        raise ValueError(f"line {n} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"line {n} is not valid JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise ValueError(f"line {n} nests deeper than {MAX_JSON_DEPTH} levels: flatten it") from None
    except ValueError as e:  # an integer beyond Python's 4,300-digit conversion limit
        raise ValueError(f"line {n} is not usable JSON: {e}") from None
    validate_row(row, where=f"line {n}")
    return row


def read_rows(lines: Iterable[bytes | str]) -> list[dict[str, Any]]:
    """Every row of a JSONL file (its lines, as bytes or text); ``ValueError`` on the first bad line or
    when there is no row at all."""
    rows = [parse_row(raw, n) for n, raw in enumerate(lines, 1) if raw.strip()]
    if not rows:
        raise ValueError("the file has no rows: give one JSON object a line")
    return rows
