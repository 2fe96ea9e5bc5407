"""``/internal/v1``: what workers call (worker secret). Every write carries the fence of its claim.

A write with a stale fence answers 409 and changes nothing: a worker that lost its lease (and whose job
was claimed again) can no longer touch the job. See docs/contracts.md for the bodies.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from rlcore.checkpoint import MANIFEST
from rlcore.errors import ErrorCode
from rlcore.rewards.secrets import Scrubber
from rlcore.spec import apply_header_secrets
from service import crud, storage
from service.deps import CipherDep, JobId, SettingsDep, WorkerAuth, WorkerSessionDep
from service.models import Job
from service.schemas import (
    Accepted,
    CheckpointId,
    CheckpointRegister,
    ClaimRequest,
    ClaimResponse,
    EventsBatch,
    FinishRequest,
    HeartbeatRequest,
    HeartbeatResponse,
    JobPublic,
    MetricsBatch,
    ModelCheckpoint,
    SamplesBatch,
)
from service.validation import checkpoint_model_dir

M = TypeVar("M", bound=BaseModel)
router = APIRouter(prefix="/internal/v1/jobs", tags=["internal"], dependencies=[WorkerAuth])


def _count(request: Request, kind: str, n: int) -> None:
    request.app.state.observability.ingested.labels(kind).inc(n)


@router.post(
    "/{job_id}/claim",
    response_model=ClaimResponse,
    responses={409: {"description": "Not claimable; or unservable: the job was marked failed (its code)."}},
)
def claim(
    job_id: JobId, body: ClaimRequest, session: WorkerSessionDep, settings: SettingsDep, cipher: CipherDep
) -> ClaimResponse | JSONResponse:
    job = crud.claim(session, job_id, body.worker_id, body.lease_seconds or settings.lease_seconds)
    try:
        spec = _worker_spec(session, job, cipher)
        model_checkpoint = _model_checkpoint(session, job)
    except Unservable as exc:
        # Failed and committed, then a 409 that the worker reads as "nothing to run": a job whose parts are
        # gone must not be delivered, claimed and crashed again and again.
        crud.fail_unservable(session, job, exc.code, exc.message)
        return JSONResponse(
            {"detail": {"code": exc.code, "message": f"job {job.id} cannot run and failed: {exc.message}"}},
            status_code=409,
        )
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
    """The spec with header values in clear and an uploaded dataset inlined: GPU machines need no DB."""
    spec = apply_header_secrets(job.spec, cipher.decrypt(job.secret_headers))
    file_id = spec["dataset"].get("file_id")
    if file_id:
        spec["dataset"] = {"rows": _file_rows(session, job, file_id)}
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
    if ckpt is None or model_dir is None or not storage.exists(storage.join(ckpt.location, MANIFEST)):
        raise Unservable(
            ErrorCode.MODEL_CHECKPOINT_UNAVAILABLE,
            f"the {gone} is no longer in the artifact store; submit the job with another checkpoint",
        )
    return ModelCheckpoint(
        id=ckpt.id, location=ckpt.location, manifest_sha256=ckpt.manifest_sha256, model_dir=model_dir
    )


@router.post("/{job_id}/heartbeat", response_model=HeartbeatResponse)
def heartbeat(
    job_id: JobId, body: HeartbeatRequest, session: WorkerSessionDep, settings: SettingsDep
) -> HeartbeatResponse:
    job = crud.fenced_job(session, job_id, body.fence)
    action, expires = crud.heartbeat(session, job, settings.lease_seconds, body.step, body.total_steps)
    return HeartbeatResponse(action=action, lease_expires_at=expires)


@router.post("/{job_id}/metrics", response_model=Accepted)
def metrics(job_id: JobId, body: MetricsBatch, session: WorkerSessionDep, request: Request) -> Accepted:
    job = crud.fenced_job(session, job_id, body.fence)
    n = crud.ingest_metrics(session, job, body.points)
    _count(request, "metric_points", n)
    return Accepted(accepted=n)


def _scrubbed(job: Job, cipher: Any, model: M) -> M:
    """``model`` with the job's reward header values redacted. Workers scrub what they report; the API does
    it again for text that reaches rows and responses, so that no worker (an older one too) can store one."""
    if not job.secret_headers:
        return model
    return Scrubber.for_headers(cipher.decrypt(job.secret_headers)).model(model)


@router.post("/{job_id}/events", response_model=Accepted)
def events(
    job_id: JobId, body: EventsBatch, session: WorkerSessionDep, request: Request, cipher: CipherDep
) -> Accepted:
    job = crud.fenced_job(session, job_id, body.fence)
    n = crud.ingest_events(session, job, _scrubbed(job, cipher, body).events)
    _count(request, "events", n)
    return Accepted(accepted=n)


@router.post("/{job_id}/samples", response_model=Accepted)
def samples(job_id: JobId, body: SamplesBatch, session: WorkerSessionDep, request: Request) -> Accepted:
    job = crud.fenced_job(session, job_id, body.fence)
    n = crud.ingest_samples(session, job, body.samples)
    _count(request, "samples", n)
    return Accepted(accepted=n)


@router.post("/{job_id}/checkpoints", response_model=CheckpointId)
def checkpoints(
    job_id: JobId, body: CheckpointRegister, session: WorkerSessionDep, request: Request
) -> CheckpointId:
    job = crud.fenced_job(session, job_id, body.fence)
    ckpt_id = crud.register_checkpoint(session, job, body)
    _count(request, "checkpoints", 1)
    return CheckpointId(id=ckpt_id)


@router.post("/{job_id}/finish", response_model=JobPublic)
def finish(job_id: JobId, body: FinishRequest, session: WorkerSessionDep, cipher: CipherDep) -> JobPublic:
    job = crud.fenced_job(session, job_id, body.fence, states=None)
    if job.status == body.status:
        return crud.job_public(job)  # a retried finish whose first answer was lost
    crud.fenced_job(session, job_id, body.fence)  # otherwise the job must still be leased
    crud.finish(session, job, _scrubbed(job, cipher, body))
    return crud.job_public(job)
