"""The job state machine: one table of every allowed change, read by each action that changes a state.

``validating → queued → running → succeeded | failed``, with ``cancelling → cancelled`` and
``pausing → paused → (resume) queued``. Each action (a tenant's cancel, pause or resume; a worker's claim
or finish; the reaper's sweep) looks its move up here; a state the action has no row for is an illegal
transition (409 ``illegal_transition``), and a state the action would leave unchanged is a no-op (a repeated
cancel is not an error). ``crud.set_status`` refuses any (from, to) pair not in :data:`ALLOWED`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from service.errors import Conflict
from service.models import JobStatus

S = JobStatus


class Action(str, enum.Enum):
    CANCEL = "cancel"
    PAUSE = "pause"
    RESUME = "resume"
    CLAIM = "claim"
    # A worker's finish, one per reported status.
    SUCCEED = "succeed"
    FAIL = "fail"
    STOP_CANCELLED = "stop_cancelled"
    STOP_PAUSED = "stop_paused"
    # The reaper, for a lease that ran out: with attempts left, and after the last one.
    REAP = "reap"
    REAP_LAST = "reap_last"


@dataclass(frozen=True)
class Move:
    target: JobStatus
    message: str


_LEASED = (S.RUNNING, S.CANCELLING, S.PAUSING)


def _finish(target: JobStatus, message: str) -> dict[JobStatus, Move | None]:
    return {s: Move(target, message) for s in _LEASED}


# action → {current state: the move, or None when the job is already where the action leads}.
TABLE: dict[Action, dict[JobStatus, Move | None]] = {
    Action.CANCEL: {
        S.VALIDATING: Move(S.CANCELLED, "job cancelled"),
        S.QUEUED: Move(S.CANCELLED, "job cancelled"),
        S.PAUSED: Move(S.CANCELLED, "job cancelled"),
        # A worker holds it: its next heartbeat answers "cancel", then it finishes as cancelled.
        S.RUNNING: Move(S.CANCELLING, "cancel requested"),
        S.PAUSING: Move(S.CANCELLING, "cancel requested"),
        S.CANCELLING: None,
        S.CANCELLED: None,
    },
    Action.PAUSE: {
        S.RUNNING: Move(S.PAUSING, "pause requested"),
        S.QUEUED: Move(S.PAUSED, "job paused before it started"),
        S.VALIDATING: Move(S.PAUSED, "job paused before it started"),
        S.PAUSING: None,
        S.PAUSED: None,
    },
    Action.RESUME: {
        # The worker has not stopped yet: withdrawing the request is enough.
        S.PAUSING: Move(S.RUNNING, "pause withdrawn"),
        S.PAUSED: Move(S.QUEUED, "job resumed"),
    },
    Action.CLAIM: {S.QUEUED: Move(S.RUNNING, "claimed")},
    Action.SUCCEED: _finish(S.SUCCEEDED, "job succeeded"),
    Action.FAIL: _finish(S.FAILED, "job failed"),
    Action.STOP_CANCELLED: _finish(S.CANCELLED, "job cancelled"),
    Action.STOP_PAUSED: _finish(S.PAUSED, "job paused"),
    Action.REAP: {
        S.CANCELLING: Move(S.CANCELLED, "job cancelled (its worker stopped answering)"),
        S.PAUSING: Move(S.PAUSED, "job paused (its worker stopped answering)"),
        S.RUNNING: Move(S.QUEUED, "lease expired; job requeued"),
    },
    Action.REAP_LAST: {
        S.CANCELLING: Move(S.CANCELLED, "job cancelled (its worker stopped answering)"),
        S.PAUSING: Move(S.PAUSED, "job paused (its worker stopped answering)"),
        S.RUNNING: Move(S.FAILED, "job failed: worker_lost_repeatedly"),
    },
}

# Every (from, to) pair some action may make.
ALLOWED: frozenset[tuple[JobStatus, JobStatus]] = frozenset(
    (current, move.target) for moves in TABLE.values() for current, move in moves.items() if move
)

FINISH_ACTIONS = {
    S.SUCCEEDED: Action.SUCCEED,
    S.FAILED: Action.FAIL,
    S.CANCELLED: Action.STOP_CANCELLED,
    S.PAUSED: Action.STOP_PAUSED,
}

# What a tenant is told when its action does not apply to the job's state.
_REFUSALS = {
    Action.CANCEL: "job {job} already {state}; it cannot be cancelled",
    Action.PAUSE: "job {job} is {state}; only a queued or running job can be paused",
    Action.RESUME: "job {job} is {state}; only a paused job can be resumed",
}


def move(action: Action, current: JobStatus, job_id: str) -> Move | None:
    """The move ``action`` makes from ``current`` (None: already done); 409 when it does not apply."""
    moves = TABLE[action]
    if current not in moves:
        template = _REFUSALS.get(action, "job {job} is {state}; it cannot " + action.value)
        raise Conflict(template.format(job=job_id, state=current.value), code="illegal_transition")
    return moves[current]


def check(current: JobStatus, target: JobStatus, job_id: str) -> None:
    """409 unless the table allows ``current → target``."""
    if (current, target) not in ALLOWED:
        raise Conflict(
            f"job {job_id} is {current.value}; it cannot become {target.value}", code="illegal_transition"
        )
