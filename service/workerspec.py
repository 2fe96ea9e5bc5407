"""What a worker gets when it claims a job: the spec it runs and the checkpoints it starts from.

The worker needs no database: reward header values are decrypted into the spec and an uploaded dataset is
inlined. A job whose parts are gone (its dataset file, the checkpoint it continues from) is ``Unservable``.
"""

from __future__ import annotations

import json
from typing import Any

from rlcore.checkpoint import MANIFEST
from rlcore.errors import ErrorCode
from rlcore.spec import apply_header_secrets
from service import crud, storage
from service.crypto import HeaderCipher
from service.models import Job
from service.schemas import ClaimResponse, ModelCheckpoint
from service.validation import checkpoint_model_dir


def claim_response(session: Any, job: Job, cipher: HeaderCipher) -> ClaimResponse:
    """The claim's answer for a job just claimed; ``Unservable`` when no worker can run it."""
    spec = _worker_spec(session, job, cipher)
    model_checkpoint = _model_checkpoint(session, job)
    ckpt = crud.newest_checkpoint(session, job.id)
    return ClaimResponse(
        job_id=job.id,
        fence=job.fence,
        attempt=job.attempts,
        spec=spec,
        resume={"step": ckpt.step, "location": ckpt.location} if ckpt else None,
        model_checkpoint=model_checkpoint,
        lease_expires_at=job.lease_expires_at,
    )


class Unservable(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _worker_spec(session: Any, job: Job, cipher: Any) -> dict[str, Any]:
    """The spec with header values in clear and uploaded datasets inlined: GPU machines need no DB."""
    spec = apply_header_secrets(job.spec, cipher.decrypt(job.secret_headers))
    file_id = spec["dataset"].get("file_id")
    if file_id:
        spec["dataset"] = {"rows": _file_rows(session, job, file_id)}
    evaluation = spec.get("evaluation")
    eval_file_id = evaluation["dataset"].get("file_id") if evaluation else None
    if eval_file_id:  # the held-out set, likewise (a copy: the stored spec keeps its file id)
        spec["evaluation"] = {**evaluation, "dataset": {"rows": _file_rows(session, job, eval_file_id)}}
    if not _sendable(spec):
        # Never quote the spec: it holds the reward header values.
        raise Unservable(
            ErrorCode.INVALID_SPEC,
            "the stored job spec holds text that is not valid Unicode or a number that is not finite; "
            "submit the job again",
        )
    return spec


def _file_rows(session: Any, job: Job, file_id: str) -> list[dict[str, Any]]:
    f = crud.file_for_tenant(session, job.tenant_id, file_id)
    unavailable = f"the dataset file {file_id} is missing or unreadable in the artifact store"
    if f is None:
        raise Unservable(
            ErrorCode.DATASET_UNAVAILABLE, f"the dataset file {file_id} no longer exists; upload it again"
        )
    try:
        rows = storage.read_jsonl_rows(f.location)
    except (OSError, ValueError, RecursionError) as exc:  # missing, not UTF-8, not JSON, not a row
        reason = (exc.strerror if isinstance(exc, OSError) else None) or type(exc).__name__
        raise Unservable(ErrorCode.DATASET_UNAVAILABLE, f"{unavailable} ({reason}); upload it again") from exc
    if not _sendable(rows):
        raise Unservable(
            ErrorCode.DATASET_UNAVAILABLE,
            f"the dataset file {file_id} holds text that is not valid Unicode (a lone surrogate escape "
            "such as \\ud800); fix the file and upload it again",
        )
    return rows


def _sendable(value: Any) -> bool:
    """Whether ``value`` survives the JSON response: UTF-8 encodable (no lone surrogates), finite."""
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (ValueError, TypeError, RecursionError):  # UnicodeEncodeError is a ValueError
        return False
    return True


def _model_checkpoint(session: Any, job: Job) -> ModelCheckpoint | None:
    """Where the worker fetches the checkpoint the job continues from (``model.checkpoint``)."""
    ckpt_id = (job.spec.get("model") or {}).get("checkpoint")
    if not ckpt_id:
        return None
    gone = f"checkpoint {ckpt_id} that the job continues from"
    ckpt = crud.checkpoint_for_tenant(session, job.tenant_id, ckpt_id)
    model_dir = checkpoint_model_dir(ckpt) if ckpt is not None else None
    deleted = ckpt is not None and ckpt.deleted_at is not None
    if (
        ckpt is None
        or deleted
        or model_dir is None
        or not storage.exists(storage.join(ckpt.location, MANIFEST))
    ):
        raise Unservable(
            ErrorCode.MODEL_CHECKPOINT_UNAVAILABLE,
            f"the {gone} is no longer in the artifact store; submit the job with another checkpoint",
        )
    return ModelCheckpoint(
        id=ckpt.id, location=ckpt.location, manifest_sha256=ckpt.manifest_sha256, model_dir=model_dir
    )
