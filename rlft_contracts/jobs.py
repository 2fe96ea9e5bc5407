"""How a worker ends one attempt of a job: the statuses ``POST /internal/v1/jobs/{id}/finish`` takes."""

from __future__ import annotations

import enum


class FinishStatus(str, enum.Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PAUSED = "paused"

    def __str__(self) -> str:  # the value in f-strings and logs on every Python version
        return self.value


# After these the job is over for good: the worker deletes its local checkpoints (all are in the store).
FINAL = frozenset({FinishStatus.SUCCEEDED, FinishStatus.FAILED, FinishStatus.CANCELLED})
