"""Prometheus metrics: jobs by state (read from the database at scrape), request latency by route,
ingestion counts, SSE subscribers.

One registry per app, so that tests building many apps never collide on metric names. Under
``rlft serve --workers N`` every API process writes its counters, histograms and gauges to files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode, chosen when that variable is set before
the processes start); a scrape of any process then answers the sums over all of them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from service import crud
from service.models import JobStatus


class JobsByState(Collector):
    def __init__(self, factory: sessionmaker[Session]):
        self._factory = factory

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("rlft_jobs", "Jobs by state.", labels=["state"])
        with self._factory() as session:
            counts = crud.count_by_status(session)
        for state in JobStatus:
            family.add_metric([state.value], counts.get(state.value, 0))
        yield family


# prometheus-client's own variable: its value class is chosen from it when the library is first imported.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The directory of prometheus-client's multiprocess mode, when the processes were started in it."""
    return os.environ.get(MULTIPROC_ENV) or None


class Observability:
    def __init__(self, factory: sessionmaker[Session]):
        # What this process records; in multiprocess mode the values live in files, not in this registry.
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "rlft_http_request_duration_seconds",
            "Request latency by route template.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.ingested = Counter(
            "rlft_ingested_total", "Items ingested from workers.", ["kind"], registry=self.registry
        )
        self.sse_subscribers = Gauge(
            "rlft_sse_subscribers",
            "Open SSE event streams (summed over the live API processes).",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.jobs = JobsByState(factory)
        self.registry.register(self.jobs)

    def scrape_registry(self) -> CollectorRegistry:
        """What ``/metrics`` answers: this process's registry, or every process's files summed."""
        directory = multiprocess_dir()
        if directory is None:
            return self.registry
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
        # Read from the database, once: not a per-process value to add up.
        registry.register(self.jobs)
        return registry

    def close(self) -> None:
        """A process that stops leaves its gauges out of the live sums (counters keep what it counted)."""
        if multiprocess_dir() is not None:
            multiprocess.mark_process_dead(os.getpid())


class LatencyMiddleware:
    """Times every request under its route template (``/v1/jobs/{job_id}``), never the raw path."""

    def __init__(self, app: ASGIApp, observability: Observability):
        self.app = app
        self.obs = observability

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: dict[str, Any] = {"code": 500}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            self.obs.latency.labels(scope["method"], template, str(status["code"])).observe(
                time.perf_counter() - start
            )


class BodyLimitMiddleware:
    """413 for a request whose Content-Length exceeds the limit, before any of it is read.

    (A chunked body carries no length; uploads also count bytes as they are validated.)
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.max_bytes:
                response = JSONResponse(
                    {
                        "detail": {
                            "code": "request_too_large",
                            "message": f"requests are limited to {self.max_bytes} bytes",
                        }
                    },
                    status_code=413,
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
