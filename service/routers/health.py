"""Liveness, readiness (database and broker reachable) and Prometheus metrics (behind the worker secret)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from service.deps import MetricsAuth

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    checks = {"database": _database_ok(request), "broker": request.app.state.queue.ping()}
    ready = all(checks.values())
    body = {"status": "ready" if ready else "not ready", "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503)


def _database_ok(request: Request) -> bool:
    try:
        with request.app.state.session_factory() as session:
            session.execute(text("SELECT 1"))
        return True
    except Exception:  # noqa: BLE001 - any failure means not ready
        return False


@router.get("/metrics", response_class=Response, dependencies=[MetricsAuth])
def metrics(request: Request) -> Response:
    registry = request.app.state.observability.scrape_registry()
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
