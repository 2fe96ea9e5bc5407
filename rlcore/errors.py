"""Errors that end a job, each with a machine-readable code (the README's "The REST API" lists them).

``ErrorCode`` is the one list of the codes a failed job can carry, whichever process decides it: the engine
(the exceptions below), the worker (devices, the artifact store, a crash) and the service (the claim, the
reaper). Every part imports the code from here; none writes it as a literal.
"""

from __future__ import annotations

import enum


class ErrorCode(str, enum.Enum):
    """The ``error.code`` of a failed job. A ``str``: it is written to JSON and the database as its value."""

    # The engine.
    INVALID_SPEC = "invalid_spec"
    DATASET_INVALID = "dataset_invalid"
    MODEL_LOAD_FAILED = "model_load_failed"
    MODEL_PATH_FORBIDDEN = "model_path_forbidden"
    MODEL_NOT_LOADABLE = "model_not_loadable"
    CHECKPOINT_INVALID = "checkpoint_invalid"
    REWARD_ENDPOINT_UNREACHABLE = "reward_endpoint_unreachable"
    REWARD_INVALID = "reward_invalid"
    REWARD_ENDPOINT_REJECTED = "reward_endpoint_rejected"
    REWARD_URL_FORBIDDEN = "reward_url_forbidden"
    TRAINING_DIVERGED = "training_diverged"
    OUT_OF_MEMORY = "out_of_memory"
    INTERRUPTED = "interrupted"  # a stop that was asked for; never a failed job's code
    INTERNAL_ERROR = "internal_error"
    # The worker, around the training process.
    ARTIFACT_STORE_UNAVAILABLE = "artifact_store_unavailable"
    INSUFFICIENT_DEVICES = "insufficient_devices"
    MODEL_CHECKPOINT_UNAVAILABLE = "model_checkpoint_unavailable"
    TIME_LIMIT_EXCEEDED = "time_limit_exceeded"
    TRAINING_PROCESS_CRASHED = "training_process_crashed"
    # The service, at the claim and in the reaper.
    DATASET_UNAVAILABLE = "dataset_unavailable"
    WORKER_LOST_REPEATEDLY = "worker_lost_repeatedly"

    def __str__(self) -> str:  # the value in f-strings and logs on every Python version
        return self.value


class RLFTError(Exception):
    """A failure with a stable ``code`` for machines and a ``message`` for people."""

    code: str = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, str]:
        return {"code": str(self.code), "message": self.message}


class ConfigError(RLFTError):
    code = ErrorCode.INVALID_SPEC


class DatasetError(RLFTError):
    code = ErrorCode.DATASET_INVALID


class ModelLoadError(RLFTError):
    code = ErrorCode.MODEL_LOAD_FAILED


class RewardEndpointUnreachable(RLFTError):
    code = ErrorCode.REWARD_ENDPOINT_UNREACHABLE


class RewardInvalid(RLFTError):
    code = ErrorCode.REWARD_INVALID


class RewardRejected(RLFTError):
    """The endpoint answered a 4xx other than 429: retrying cannot help."""

    code = ErrorCode.REWARD_ENDPOINT_REJECTED


class RewardURLForbidden(RLFTError):
    code = ErrorCode.REWARD_URL_FORBIDDEN


class TrainingDiverged(RLFTError):
    code = ErrorCode.TRAINING_DIVERGED


class OutOfMemory(RLFTError):
    code = ErrorCode.OUT_OF_MEMORY


class Interrupted(RLFTError):
    """A stop was asked (SIGTERM for cancel or pause); a checkpoint was written before raising."""

    code = ErrorCode.INTERRUPTED


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` means the process ran out of memory, without importing torch: Python's
    ``MemoryError``, torch's ``OutOfMemoryError`` (CUDA), this module's ``OutOfMemory``, or a
    ``RuntimeError`` that says so (CPU allocators and older torch raise those)."""
    if isinstance(exc, (MemoryError, OutOfMemory)) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def error_for_exception(exc: BaseException) -> dict[str, str]:
    """The job's error ``{code, message}`` for an exception that ended training (not yet scrubbed)."""
    if isinstance(exc, RLFTError):
        return {"code": str(exc.code), "message": exc.message}
    if is_out_of_memory(exc):
        # A RuntimeError that says "out of memory" is quoted as it is; the others get the words added.
        says_so = isinstance(exc, RuntimeError) and type(exc).__name__ != "OutOfMemoryError"
        return {
            "code": ErrorCode.OUT_OF_MEMORY.value,
            "message": str(exc) if says_so else f"out of memory: {exc}",
        }
    return {"code": ErrorCode.INTERNAL_ERROR.value, "message": f"{type(exc).__name__}: {exc}"}
