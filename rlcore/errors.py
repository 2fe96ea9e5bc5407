"""Errors that end a job, each with a machine-readable code (the README's "The REST API" lists them)."""

from __future__ import annotations


class RLFTError(Exception):
    """A failure with a stable ``code`` for machines and a ``message`` for people."""

    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class ConfigError(RLFTError):
    code = "invalid_spec"


class DatasetError(RLFTError):
    code = "dataset_invalid"


class ModelLoadError(RLFTError):
    code = "model_load_failed"


class RewardEndpointUnreachable(RLFTError):
    code = "reward_endpoint_unreachable"


class RewardInvalid(RLFTError):
    code = "reward_invalid"


class RewardRejected(RLFTError):
    """The endpoint answered a 4xx other than 429: retrying cannot help."""

    code = "reward_endpoint_rejected"


class RewardURLForbidden(RLFTError):
    code = "reward_url_forbidden"


class TrainingDiverged(RLFTError):
    code = "training_diverged"


class OutOfMemory(RLFTError):
    code = "out_of_memory"


class Interrupted(RLFTError):
    """A stop was asked (SIGTERM for cancel or pause); a checkpoint was written before raising."""

    code = "interrupted"
