"""Prometheus metrics: jobs by state (read from the database at scrape), request latency, ingestion counts.

One registry per app, so that tests building many apps never collide on metric names.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker
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


class Observability:
    def __init__(self, factory: sessionmaker[Session]):
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
        self.registry.register(JobsByState(factory))


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
