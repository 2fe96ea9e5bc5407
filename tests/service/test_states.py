"""The one table of job state changes (service/states.py): the diagram of the architecture, nothing more."""

from __future__ import annotations

import pytest

from service import states
from service.errors import Conflict
from service.models import TERMINAL, JobStatus
from service.states import Action

S = JobStatus


def test_the_table_is_the_documented_diagram() -> None:
    # validating → queued → running → succeeded | failed; cancelling → cancelled; pausing → paused → queued.
    assert (S.QUEUED, S.RUNNING) in states.ALLOWED
    assert {(S.RUNNING, S.SUCCEEDED), (S.RUNNING, S.FAILED)} <= states.ALLOWED
    assert {(S.RUNNING, S.CANCELLING), (S.CANCELLING, S.CANCELLED)} <= states.ALLOWED
    assert {(S.RUNNING, S.PAUSING), (S.PAUSING, S.PAUSED), (S.PAUSED, S.QUEUED)} <= states.ALLOWED
    # Nothing leaves a terminal state, and nothing goes back to validating.
    assert not [pair for pair in states.ALLOWED if pair[0] in TERMINAL or pair[1] is S.VALIDATING]


@pytest.mark.parametrize(
    ("action", "state", "words"),
    [
        (Action.CANCEL, S.SUCCEEDED, "already succeeded; it cannot be cancelled"),
        (Action.PAUSE, S.FAILED, "only a queued or running job can be paused"),
        (Action.PAUSE, S.CANCELLING, "only a queued or running job can be paused"),
        (Action.RESUME, S.RUNNING, "only a paused job can be resumed"),
        (Action.SUCCEED, S.QUEUED, "it cannot succeed"),
    ],
)
def test_an_action_that_does_not_apply_is_409(action: Action, state: JobStatus, words: str) -> None:
    with pytest.raises(Conflict, match=words) as exc:
        states.move(action, state, "job_x")
    assert exc.value.code == "illegal_transition"


def test_repeats_are_no_ops_and_unlisted_pairs_refused() -> None:
    assert states.move(Action.CANCEL, S.CANCELLED, "job_x") is None
    assert states.move(Action.PAUSE, S.PAUSING, "job_x") is None
    with pytest.raises(Conflict, match="cannot become running"):
        states.check(S.SUCCEEDED, S.RUNNING, "job_x")
