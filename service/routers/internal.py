"""``/internal/v1``: what workers call (worker secret). Every write carries the fence of its claim.

A write with a stale fence answers 409 and changes nothing: a worker that lost its lease (and whose job
was claimed again) can no longer touch the job. See docs/contracts.md for the bodies.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from rlcore.rewards.secrets import Scrubber
from service import crud, workerspec
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
    SamplesBatch,
)

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
        return workerspec.claim_response(session, job, cipher)
    except workerspec.Unservable as exc:
        # Failed and committed, then a 409 that the worker reads as "nothing to run": a job whose parts are
        # gone must not be delivered, claimed and crashed again and again.
        crud.fail_unservable(session, job, exc.code, exc.message)
        return JSONResponse(
            {"detail": {"code": exc.code, "message": f"job {job.id} cannot run and failed: {exc.message}"}},
            status_code=409,
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
