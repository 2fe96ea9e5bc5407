"""The app factory: ``uvicorn --factory service.app:create_app``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc

from rlft_contracts.settings import Settings, get_settings
from service import notify, reaper
from service.admission import AdmissionMiddleware, DryRunSlots, Gate
from service.crypto import HeaderCipher
from service.db import make_engine, make_session_factory, migrate
from service.errors import ApiError, Unavailable
from service.observability import BodyLimitMiddleware, LatencyMiddleware, Observability
from service.queue import JobQueue
from service.routers import files, health, internal, jobs, rewards, ui

log = logging.getLogger(__name__)
# Connections and threads beyond the admitted requests: SSE polls, the reaper, readiness and metrics.
POOL_HEADROOM = 8
# SSE streams read the database when woken (service/notify.py); this many reads run at once per API process.
SSE_POLLS_AT_ONCE = 4


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    # Fail at startup, naming the variable to set, rather than at the first request.
    worker_secret = settings.resolved_worker_secret()
    cipher = HeaderCipher(settings.resolved_encryption_key())
    if settings.is_sqlite:
        # The embedded default needs no separate migration step; Postgres is migrated by `rlft migrate`.
        migrate(settings)
    # Pools sized against the requests admitted (service/admission.py), so that an admitted request never
    # waits for a connection; the headroom serves SSE polls, the reaper, and the readiness probe.
    public = settings.max_requests_in_flight
    wait = settings.db_wait_s
    engine = make_engine(settings.database_url, pool_size=public, max_overflow=POOL_HEADROOM, wait_s=wait)
    factory = make_session_factory(engine)
    read_engine = (
        make_engine(
            settings.database_url, read_only=True, pool_size=public, max_overflow=POOL_HEADROOM, wait_s=wait
        )
        if settings.is_sqlite
        else engine
    )
    # The worker API's own pool: a burst of public requests cannot take the connections heartbeats need.
    worker_engine = make_engine(
        settings.database_url, pool_size=settings.max_worker_requests_in_flight, max_overflow=0, wait_s=wait
    )

    app = FastAPI(
        title="rlft",
        version="1",
        summary="RL fine-tuning jobs as a service.",
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.session_factory = factory
    app.state.read_engine = read_engine
    app.state.read_session_factory = make_session_factory(read_engine)
    app.state.worker_engine = worker_engine
    app.state.worker_session_factory = make_session_factory(worker_engine)
    app.state.observability = Observability(app.state.read_session_factory)
    # Every session that can add events wakes the SSE subscribers of their jobs when it commits.
    app.state.event_bus = notify.EventBus(app.state.observability.sse_subscribers)
    for writer in (factory, app.state.worker_session_factory):
        notify.install(writer, engine, app.state.event_bus)
    app.state.sse_polls = asyncio.Semaphore(SSE_POLLS_AT_ONCE)
    app.state.sse_reads = notify.SharedReads(app.state.sse_polls)
    app.state.dry_runs = DryRunSlots(settings.max_dry_runs_per_tenant, settings.max_dry_runs_in_flight)
    app.state.cipher = cipher
    app.state.worker_secret = worker_secret
    app.state.queue = JobQueue(settings)
    # Multipart framing adds a little to the largest upload; no other body comes near it.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes + 1024 * 1024)
    app.add_middleware(LatencyMiddleware, observability=app.state.observability)
    # Outermost: a refused request costs no thread, no body read and no database work.
    app.add_middleware(
        AdmissionMiddleware,
        public=Gate(public, settings.admission_wait_s, "RLFT_MAX_REQUESTS_IN_FLIGHT"),
        internal=Gate(
            settings.max_worker_requests_in_flight,
            settings.admission_wait_s,
            "RLFT_MAX_WORKER_REQUESTS_IN_FLIGHT",
        ),
    )
    _add_error_handlers(app)
    for module in (jobs, files, rewards, health, internal):
        app.include_router(module.router)
    ui.mount(app)
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    # One thread per admitted request of either budget, plus the SSE polls and the reaper: a request let
    # in never queues for a thread behind requests that could not be served anyway.
    limiter = anyio.to_thread.current_default_thread_limiter()
    limiter.total_tokens = (
        settings.max_requests_in_flight + settings.max_worker_requests_in_flight + POOL_HEADROOM
    )
    tasks = [notify.start(app.state)]
    if settings.run_background_tasks:
        tasks.append(
            asyncio.create_task(reaper.run_forever(app.state.session_factory, settings, app.state.queue))
        )
    try:
        yield
    finally:
        for task in filter(None, tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        app.state.queue.close()
        app.state.observability.close()
        app.state.engine.dispose()
        app.state.read_engine.dispose()
        app.state.worker_engine.dispose()


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(sa_exc.TimeoutError)
    async def pool_exhausted(request: Request, _exc: sa_exc.TimeoutError) -> JSONResponse:
        log.warning("%s %s: no database connection within RLFT_DB_WAIT_S", request.method, request.url.path)
        return Unavailable(
            "the database is busy: no connection came free in time; retry after 1 s",
            code="database_busy",
        ).response()

    @app.exception_handler(sa_exc.OperationalError)
    async def database_unavailable(request: Request, exc: sa_exc.OperationalError) -> JSONResponse:
        # SQLite's "database is locked", Postgres refusing connections (too many clients, restarting):
        # all pass, so the answer is a retry, not a 500. The driver's text can name hosts: log it only.
        log.warning("%s %s: database unavailable: %s", request.method, request.url.path, exc.orig)
        return Unavailable(
            "the database is busy or unreachable; retry after 1 s", code="database_busy"
        ).response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # Never echo the input: a job body carries reward header secrets.
        return JSONResponse({"detail": [_validation_item(e) for e in exc.errors()]}, status_code=422)


def _validation_item(error: dict) -> dict:
    loc = [str(p) for p in error.get("loc", ())]
    field = ".".join(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    msg = str(error.get("msg", "invalid"))
    return {"loc": loc, "field": field or None, "msg": msg, "type": error.get("type", "value_error")}
