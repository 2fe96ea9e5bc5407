"""``/internal/v1``: what workers call (worker secret). Every write carries the fence of its claim.

A write with a stale fence answers 409 and changes nothing: a worker that lost its lease (and whose job
was claimed again) can no longer touch the job. See docs/contracts.md for the bodies.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

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
    SamplesBatch,
)

router = APIRouter(prefix="/internal/v1/jobs", tags=["internal"], dependencies=[WorkerAuth])


def _count(request: Request, kind: str, n: int) -> None:
    request.app.state.observability.ingested.labels(kind).inc(n)


@router.post("/{job_id}/claim", response_model=ClaimResponse)
def claim(
    job_id: JobId, body: ClaimRequest, session: WorkerSessionDep, settings: SettingsDep, cipher: CipherDep
) -> ClaimResponse:
    job = crud.claim(session, job_id, body.worker_id, body.lease_seconds or settings.lease_seconds)
    ckpt = crud.newest_checkpoint(session, job.id)
    return ClaimResponse(
        job_id=job.id,
        fence=job.fence,
        attempt=job.attempts,
        spec=_worker_spec(session, job, cipher),
        resume={"step": ckpt.step, "location": ckpt.location} if ckpt else None,
        lease_expires_at=job.lease_expires_at,
    )


def _worker_spec(session: Any, job: Job, cipher: Any) -> dict[str, Any]:
    """The spec with header values in clear and an uploaded dataset inlined: GPU machines need no DB."""
    spec = {**job.spec, "reward": {**job.spec["reward"], "headers": cipher.decrypt(job.secret_headers)}}
    file_id = spec["dataset"].get("file_id")
    if file_id:
        f = crud.file_for_tenant(session, job.tenant_id, file_id)
        if f is not None:
            spec["dataset"] = {"rows": storage.read_jsonl_rows(f.location)}
    return spec


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


@router.post("/{job_id}/events", response_model=Accepted)
def events(job_id: JobId, body: EventsBatch, session: WorkerSessionDep, request: Request) -> Accepted:
    job = crud.fenced_job(session, job_id, body.fence)
    n = crud.ingest_events(session, job, body.events)
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
def finish(job_id: JobId, body: FinishRequest, session: WorkerSessionDep) -> JobPublic:
    job = crud.fenced_job(session, job_id, body.fence, states=None)
    if job.status == body.status:
        return crud.job_public(job)  # a retried finish whose first answer was lost
    crud.fenced_job(session, job_id, body.fence)  # otherwise the job must still be leased
    crud.finish(session, job, body)
    return crud.job_public(job)
