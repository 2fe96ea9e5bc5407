"""The app factory: ``uvicorn --factory service.app:create_app``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from rlft.settings import Settings, get_settings
from service import reaper
from service.crypto import HeaderCipher
from service.db import make_engine, make_session_factory, migrate
from service.errors import ApiError
from service.observability import BodyLimitMiddleware, LatencyMiddleware, Observability
from service.queue import JobQueue
from service.routers import files, health, internal, jobs, rewards

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    # Fail at startup, naming the variable to set, rather than at the first request.
    worker_secret = settings.resolved_worker_secret()
    cipher = HeaderCipher(settings.resolved_encryption_key())
    if settings.is_sqlite:
        # The embedded default needs no separate migration step; Postgres is migrated by `rlft migrate`.
        migrate(settings)
    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    read_engine = make_engine(settings.database_url, read_only=True) if settings.is_sqlite else engine

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
    app.state.cipher = cipher
    app.state.worker_secret = worker_secret
    app.state.queue = JobQueue(settings)
    app.state.observability = Observability(app.state.read_session_factory)
    # Multipart framing adds a little to the largest upload; no other body comes near it.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes + 1024 * 1024)
    app.add_middleware(LatencyMiddleware, observability=app.state.observability)
    _add_error_handlers(app)
    for module in (jobs, files, rewards, health, internal):
        app.include_router(module.router)
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    task = None
    if settings.run_background_tasks:
        task = asyncio.create_task(reaper.run_forever(app.state.session_factory, settings, app.state.queue))
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        app.state.queue.close()
        app.state.engine.dispose()
        app.state.read_engine.dispose()


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail()}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # Never echo the input: a job body carries reward header secrets.
        return JSONResponse({"detail": [_validation_item(e) for e in exc.errors()]}, status_code=422)


def _validation_item(error: dict) -> dict:
    loc = [str(p) for p in error.get("loc", ())]
    field = ".".join(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    msg = str(error.get("msg", "invalid"))
    return {"loc": loc, "field": field or None, "msg": msg, "type": error.get("type", "value_error")}
