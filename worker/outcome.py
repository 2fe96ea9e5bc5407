"""How an attempt ended: the job status and ``{code, message}`` error the supervisor reports.

``classify`` names the exception that ended training (in the training process); ``final_status`` decides
the finish from the result line, what the supervisor asked for (cancel, pause, the time limit, a worker
shutdown) and, when the process died without a result, how it died (``crash_error``). Codes come from
``rlcore.errors.ErrorCode``; statuses from ``rlft_contracts.jobs.FinishStatus``.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlcore.errors import ErrorCode, RLFTError, error_for_exception
from rlcore.rewards.secrets import Scrubber
from rlft_contracts.jobs import FinishStatus

MESSAGE_MAX = 2000  # characters of an error message the training process reports
LOG_TAIL_BYTES = 1500  # of child.log quoted in a crash message
# The result line's status when training stopped because it was asked to (SIGTERM), besides the
# finish statuses succeeded and failed.
INTERRUPTED = "interrupted"


@dataclass
class ChildOutcome:
    status: str | None = None  # the result line's status: succeeded | failed | INTERRUPTED
    error: dict[str, str] | None = None
    returncode: int | None = None


def classify(exc: BaseException, scrub: Scrubber | None = None) -> dict[str, Any]:
    """The job's error ``{code, message}`` for an exception that ended training, scrubbed with ``scrub``
    before any cut (a cut value would no longer match). An engine error keeps its whole message."""
    error = error_for_exception(exc)
    message = (scrub or Scrubber(()))(error["message"])
    if not isinstance(exc, RLFTError):
        message = message[:MESSAGE_MAX]
    return {"code": error["code"], "message": message}


def final_status(
    outcome: ChildOutcome, stop_action: str | None, time_limit_s: float, log_path: Path, scrub: Scrubber
) -> tuple[FinishStatus | None, dict[str, str] | None]:
    """The finish to report, or ``(None, None)``: stopped for a worker shutdown, left to the reaper."""
    if outcome.status == FinishStatus.SUCCEEDED:
        return FinishStatus.SUCCEEDED, None
    if outcome.status == FinishStatus.FAILED:
        return FinishStatus.FAILED, outcome.error
    if stop_action == "time_limit":
        return FinishStatus.FAILED, {
            "code": ErrorCode.TIME_LIMIT_EXCEEDED.value,
            "message": f"the job ran longer than {time_limit_s} s",
        }
    stopped = {"cancel": FinishStatus.CANCELLED, "pause": FinishStatus.PAUSED}.get(stop_action or "")
    if stopped:
        return stopped, None
    if outcome.status == INTERRUPTED or stop_action == "shutdown":
        return None, None
    return FinishStatus.FAILED, crash_error(outcome.returncode, log_path, scrub)


def crash_error(returncode: int | None, log_path: Path, scrub: Scrubber | None = None) -> dict[str, str]:
    """The error of a training process that ended without a result line. A SIGKILL nobody sent is the
    host's out-of-memory killer, nearly always."""
    tail = _tail(log_path, scrub or Scrubber(()))
    if returncode == -signal.SIGKILL:
        return {
            "code": ErrorCode.OUT_OF_MEMORY.value,
            "message": "the training process was killed (SIGKILL), most likely by the host's out-of-memory "
            f"killer; last output: {tail}",
        }
    how = f"signal {-returncode}" if returncode is not None and returncode < 0 else f"exit code {returncode}"
    return {
        "code": ErrorCode.TRAINING_PROCESS_CRASHED.value,
        "message": f"the training process ended with {how} without reporting a result; last output: {tail}",
    }


def _tail(path: Path, scrub: Scrubber, max_bytes: int = LOG_TAIL_BYTES) -> str:
    """The end of the log, scrubbed. Read with a margin: a value the seek cuts would no longer match, so
    the margin (which holds any such part) is dropped after decoding, and the scrubbed text cut after."""
    margin = 4 * scrub.longest  # bytes: a character is at most 4 of them
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            f.seek(max(0, size - max_bytes - margin))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    if size > max_bytes + margin:
        text = text[margin:]
    return scrub(text)[-max_bytes:].strip() or "(none)"
