"""The outbox: how the training process reports to its supervisor, one JSON object a line in a file.

Both ends are here, so that the vocabulary cannot drift: ``OutboxWriter`` (the training process appends,
worker/child.py) and ``OutboxReader`` (the supervisor tails), with ``consume`` and its dispatch table
``HANDLERS`` from each ``Kind`` of line to what the supervisor does with it. A line is
``{"type": <Kind>, ...fields}``; the kinds the service takes are named like the ``/internal/v1`` call the
relay sends them to (``metrics``, ``samples``, ``events``, ``checkpoints``), and the last line of an
attempt is ``{"type": "result", "status", "error"}``.
"""

from __future__ import annotations

import enum
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlcore.rewards.secrets import Scrubber

if TYPE_CHECKING:
    from worker.relay import Relay


class Kind(str, enum.Enum):
    PROGRESS = "progress"  # {step, total_steps}: where training starts
    METRICS = "metrics"  # {step, metrics: {name: value}}
    SAMPLES = "samples"  # {step, samples: [...]}
    EVENTS = "events"  # {level, message, data}
    CHECKPOINTS = "checkpoints"  # {step, metrics, location, manifest_sha256, size_bytes, files}
    RESULT = "result"  # {status: succeeded | failed | interrupted, error}: the last line

    def __str__(self) -> str:
        return self.value


class OutboxWriter:
    """Appends one JSON object per line; each line is flushed whole so the reader never sees half of it.
    Every string of a line is scrubbed of the reward header values first."""

    def __init__(self, path: str | os.PathLike, scrub: Scrubber | None = None):
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the process
        self._lock = threading.Lock()
        self._scrub = scrub or Scrubber(())

    def write(self, kind: Kind, **fields: Any) -> None:
        line = json.dumps({"type": kind, **fields}, default=str, allow_nan=False)
        if self._scrub:
            # Scrubbed as data, not as text: a value may hold JSON's own quotes. Through JSON first, so
            # that what default=str made of an object is scrubbed too.
            line = json.dumps(self._scrub.data(json.loads(line)), allow_nan=False)
        line += "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        self._file.close()


class OutboxReader:
    """Reads complete JSON lines appended to the outbox since the last call."""

    def __init__(self, path: Path):
        self.path = path
        self._offset = 0
        self._partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]


@dataclass
class ChildReports:
    """What the supervisor keeps of the lines it read (the rest it relays): progress and the result."""

    step: int | None = None
    total_steps: int | None = None
    status: str | None = None  # the result line's: succeeded | failed | interrupted
    error: dict[str, str] | None = None


def _metrics(relay: Relay, reports: ChildReports, line: dict[str, Any]) -> None:
    reports.step = line["step"]
    for name, value in line["metrics"].items():
        relay.add(Kind.METRICS, {"step": line["step"], "name": name, "value": value})


def _samples(relay: Relay, reports: ChildReports, line: dict[str, Any]) -> None:
    for sample in line["samples"]:
        relay.add(Kind.SAMPLES, sample)


def _events(relay: Relay, reports: ChildReports, line: dict[str, Any]) -> None:
    relay.add(Kind.EVENTS, {"type": "message", **line})


def _checkpoints(relay: Relay, reports: ChildReports, line: dict[str, Any]) -> None:
    relay.add(Kind.CHECKPOINTS, line)


def _progress(relay: Relay, reports: ChildReports, line: dict[str, Any]) -> None:
    reports.step, reports.total_steps = line["step"], line["total_steps"]


def _result(relay: Relay, reports: ChildReports, line: dict[str, Any]) -> None:
    reports.status, reports.error = line["status"], line.get("error")


HANDLERS: dict[Kind, Callable[[Relay, ChildReports, dict[str, Any]], None]] = {
    Kind.PROGRESS: _progress,
    Kind.METRICS: _metrics,
    Kind.SAMPLES: _samples,
    Kind.EVENTS: _events,
    Kind.CHECKPOINTS: _checkpoints,
    Kind.RESULT: _result,
}


def consume(lines: list[dict[str, Any]], relay: Relay, reports: ChildReports, scrub: Scrubber) -> None:
    """Relay each line in order, or keep what it says in ``reports``; a line of no known kind is skipped."""
    for line in lines:
        line = scrub.data(line)  # the child scrubs too; a line the child did not write may not be
        kind = line.pop("type", None)
        handler = HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is not None:
            handler(relay, reports, line)
