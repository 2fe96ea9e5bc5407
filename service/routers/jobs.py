"""``/v1/jobs``: create, read, list, state changes, metrics, events (polling, SSE), samples, checkpoints."""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import AfterValidator, StringConstraints, TypeAdapter
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from sse_starlette.sse import EventSourceResponse

from rlcore.spec import (
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE,
    METADATA_KEY_PATTERN,
    JobSpec,
    check_text,
)
from service import crud, downloads, submit
from service.bodies import BoundedJSONRoute
from service.deps import (
    CipherDep,
    CurrentTenant,
    JobForTenant,
    LockedJobForTenant,
    QueueDep,
    ReadSessionDep,
    SessionDep,
    SettingsDep,
)
from service.errors import Invalid
from service.models import TERMINAL, Event, Job, JobStatus, id_pattern
from service.notify import EventBus, SharedReads
from service.schemas import (
    CheckpointList,
    CheckpointPublic,
    EventList,
    EventPublic,
    JobList,
    JobPublic,
    MetricList,
    SampleList,
    SamplePublic,
    SampleSplit,
)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=BoundedJSONRoute)
_TERMINAL_VALUES = {s.value for s in TERMINAL}
# Without a LISTEN connection (SQLite; Postgres while reconnecting) streams poll this often.
SSE_POLL_S = 0.2
SSE_READ_LIMIT = 500
SSE_PING_S = 15
MAX_EVENT_ID = 2**62
# The fewest points a downsampled series may ask for: the first, the last, one bucket's low and high.
MIN_CHART_POINTS = 4


def _clean_text(value: str) -> str:
    check_text(value, "the value")
    return value


def _event_id(value: str) -> str:
    if int(value) > MAX_EVENT_ID:
        raise ValueError(f"an event id is at most {MAX_EVENT_ID}: send the id of an event you received")
    return value


# Query strings decode %00 to NUL: every free-text parameter passes the spec's own text rule.
Text = Annotated[str, AfterValidator(_clean_text)]
# Visible ASCII: a key is compared in SQL and echoed in 409s, never a place for control characters.
IdempotencyKey = Annotated[str | None, Header(pattern=r"^[\x21-\x7e]{1,255}$")]
EventId = Annotated[str | None, Header(pattern=r"^[0-9]{1,19}$"), AfterValidator(_event_id)]


@router.post("", status_code=201, response_model=JobPublic)
def create_job(
    spec: JobSpec,
    response: Response,
    tenant: CurrentTenant,
    session: SessionDep,
    settings: SettingsDep,
    cipher: CipherDep,
    queue: QueueDep,
    idempotency_key: IdempotencyKey = None,
) -> JobPublic:
    job, created = submit.create_job(
        session,
        tenant,
        spec,
        settings=settings,
        cipher=cipher,
        enqueue=queue.enqueue,
        idempotency_key=idempotency_key,
    )
    if not created:
        response.status_code = 200  # a retry with the same Idempotency-Key: the job it created
    return crud.job_public(job)


@router.get("", response_model=JobList)
def list_jobs(
    request: Request,
    tenant: CurrentTenant,
    session: ReadSessionDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[
        str | None, Query(pattern=id_pattern("job"), description="Last id of the previous page.")
    ] = None,
) -> JobList:
    """Own jobs, newest first. Filter on metadata with ``metadata.KEY=VALUE`` query parameters."""
    metadata = _metadata_filters(request)
    jobs, has_more = crud.list_jobs(
        session,
        tenant.id,
        status=status.value if status else None,
        limit=limit,
        after=after,
        metadata=metadata,
    )
    return JobList(
        data=[crud.job_public(j) for j in jobs],
        has_more=has_more,
        next_after=jobs[-1].id if has_more else None,
    )


def _metadata_filters(request: Request) -> dict[str, str]:
    """``metadata.KEY=VALUE`` query parameters, held to the rules of the metadata a job may carry."""
    filters = {}
    for k, v in request.query_params.items():
        if not k.startswith("metadata."):
            continue
        key = k[len("metadata.") :]
        if not re.fullmatch(METADATA_KEY_PATTERN, key):
            raise Invalid(
                "a metadata filter is metadata.KEY=VALUE with KEY of 1-64 letters, digits, '_', '.', ':', "
                "'/' or '-'",
                field="metadata",
            )
        if len(v) > MAX_METADATA_VALUE:
            raise Invalid(f"metadata values are at most {MAX_METADATA_VALUE} characters", field=k)
        try:
            check_text(v, k)
        except ValueError as e:
            raise Invalid(str(e), field=k) from e
        filters[key] = v
    if len(filters) > MAX_METADATA_KEYS:
        raise Invalid(
            f"at most {MAX_METADATA_KEYS} metadata filters (a job has at most as many keys)", field="metadata"
        )
    return filters


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job: JobForTenant) -> JobPublic:
    return crud.job_public(job)


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job: LockedJobForTenant, session: SessionDep) -> JobPublic:
    crud.cancel(session, job)
    return crud.job_public(job)


@router.post("/{job_id}/pause", response_model=JobPublic)
def pause_job(job: LockedJobForTenant, session: SessionDep) -> JobPublic:
    crud.pause(session, job)
    return crud.job_public(job)


@router.post("/{job_id}/resume", response_model=JobPublic)
def resume_job(job: LockedJobForTenant, session: SessionDep, queue: QueueDep) -> JobPublic:
    crud.resume(session, job, queue.enqueue)
    return crud.job_public(job)


@router.get("/{job_id}/metrics", response_model=MetricList)
def get_metrics(
    job: JobForTenant,
    session: ReadSessionDep,
    after_step: Annotated[int | None, Query(ge=-1, le=2**31 - 1)] = None,
    names: Annotated[
        list[Annotated[Text, StringConstraints(max_length=2000)]] | None,
        Query(max_length=100, description="Metric names; repeat or comma-separate."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
    max_points: Annotated[
        int | None,
        Query(
            ge=MIN_CHART_POINTS,
            le=100_000,
            description="Downsample each name's series to at most this many points for a chart, keeping "
            "the lowest and highest point of every step bucket and the first and last point.",
        ),
    ] = None,
) -> Response:
    wanted = [n for item in names or [] for n in item.split(",") if n]
    rows = crud.list_metrics(session, job.id, after_step, wanted, limit, max_points)
    # Validated and serialised by pydantic-core in one pass: a 10,000-point page costs milliseconds, where
    # model objects then FastAPI's own response validation cost half a second.
    body = _METRIC_LIST.validate_python({"data": [r._mapping for r in rows]})
    return Response(_METRIC_LIST.dump_json(body), media_type="application/json")


_METRIC_LIST = TypeAdapter(MetricList)


def _event_public(e: Event) -> EventPublic:
    return EventPublic.model_validate(e, from_attributes=True)


@router.get("/{job_id}/events", response_model=EventList)
def get_events(
    job: JobForTenant,
    session: ReadSessionDep,
    after: Annotated[int, Query(ge=0, le=2**62, description="Return events with a larger id.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> EventList:
    events, has_more = crud.list_events(session, job.id, after, limit)
    return EventList(data=[_event_public(e) for e in events], has_more=has_more)


@router.get("/{job_id}/events/stream", response_class=EventSourceResponse)
async def stream_events(
    request: Request,
    job: JobForTenant,
    after: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    last_event_id: EventId = None,
) -> EventSourceResponse:
    """Server-Sent Events; resumes after ``Last-Event-ID`` (or ``after``); ends after a terminal status."""
    cursor = int(last_event_id) if last_event_id else (after or 0)
    state = request.app.state
    stream = _event_stream(state.read_session_factory, state.sse_reads, state.event_bus, job.id, cursor)
    return EventSourceResponse(stream, ping=SSE_PING_S)


async def _event_stream(
    factory: sessionmaker[Session], reads: SharedReads, bus: EventBus, job_id: str, cursor: int
) -> Any:
    # Pushed (service/notify.py): a stream reads the database when a commit of its job wakes it, and not
    # otherwise, unless no LISTEN connection is up (SQLite, or Postgres reconnecting): then it also polls.
    # Subscribed before the first read, and the flag cleared before each read: no commit goes unseen.
    # The streams of a job woken by one commit share one read, and only a few reads run at a time.
    with bus.subscribe(job_id) as woken:
        while True:
            woken.clear()
            read = functools.partial(_poll_events, factory, job_id, cursor)
            events, status = await reads.read((job_id, cursor), read)
            for e in events:
                cursor = e.id
                yield {"id": str(e.id), "event": e.type, "data": e.model_dump_json()}
                if e.type == "status" and (e.data or {}).get("status") in _TERMINAL_VALUES:
                    return
            if not events and status in _TERMINAL_VALUES:
                return
            if len(events) < SSE_READ_LIMIT:
                await woken.wait(None if bus.live else SSE_POLL_S)


def _poll_events(factory: sessionmaker[Session], job_id: str, cursor: int) -> tuple[list[EventPublic], str]:
    """New events, and the job's status read BEFORE them.

    A terminal status commits together with its status event. Read status first and the events after, and
    a terminal status means its event is among those read (or was sent already): the stream can end. Read
    in the other order, a job finishing between the two reads (Postgres reads each statement's own
    snapshot) ended the stream without the terminal event.
    """
    with factory() as session:
        status = session.scalar(select(Job.status).where(Job.id == job_id))
        events, _ = crud.list_events(session, job_id, cursor, SSE_READ_LIMIT)
        return [_event_public(e) for e in events], status


@router.get("/{job_id}/samples", response_model=SampleList)
def get_samples(
    job: JobForTenant,
    session: ReadSessionDep,
    step: Annotated[int | None, Query(ge=0, le=2**31 - 1, description="Default: the newest step.")] = None,
    limit: Annotated[int, Query(ge=1, le=4096)] = 1000,
    split: Annotated[SampleSplit, Query(description="train (rollouts) or eval (held-out).")] = "train",
) -> SampleList:
    found, rows = crud.list_samples(session, job.id, step, limit, split)
    return SampleList(step=found, data=[SamplePublic.model_validate(s, from_attributes=True) for s in rows])


@router.get("/{job_id}/checkpoints", response_model=CheckpointList)
def list_checkpoints(
    job: JobForTenant,
    session: ReadSessionDep,
    best: Annotated[bool, Query(description="Only the best (by checkpoints.best_metric).")] = False,
) -> CheckpointList:
    rows = crud.list_checkpoints(session, job.id, best=best)
    return CheckpointList(data=[CheckpointPublic.of(c) for c in rows])


@router.get(
    "/{job_id}/checkpoints/{ckpt_id}/archive",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/x-tar": {}}, "description": "A tar of the model directory."},
        409: {"description": "variant=merged of a checkpoint without a merged model (no_merged_model)."},
        410: {"description": "Deleted by the job's retention policy (checkpoint_deleted)."},
    },
)
def checkpoint_archive(
    request: Request,
    job: JobForTenant,
    session: SessionDep,
    ckpt_id: Annotated[str, Path(pattern=id_pattern("ckpt"))],
    variant: Annotated[
        downloads.Variant,
        Query(description="model: the policy directory (with LoRA, the adapter); merged: LoRA merged."),
    ] = "model",
) -> StreamingResponse:
    archive = downloads.open_archive(session, job, ckpt_id, variant)
    return StreamingResponse(
        downloads.leased_stream(request.app.state.session_factory, archive),
        media_type="application/x-tar",
        headers={"Content-Disposition": f'attachment; filename="{archive.root}.tar"'},
    )
