"""A small typed Python client for the rlft REST API (README, "The REST API").

    from rlft.client import Client
    client = Client("http://127.0.0.1:8000", "rlft_...")
    job = client.jobs.create(spec)              # a JobSpec, a dict, or a path to a YAML file
    for event in client.jobs.stream_events(job.id):
        ...
    client.jobs.download_checkpoint(job.id, "out/")

Every error the API answers becomes an :class:`APIError` (or a subclass) that carries the HTTP status,
the machine-readable code and a message for a person; an unreachable API is :class:`APIConnectionError`.
The CLI and the tests use this client, so what works here works there.
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx

from rlft.client.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    ConflictError,
    NotFoundError,
    ValidationError,
    error_from_response,
)
from rlft.client.models import Checkpoint, Event, File, Job, JobPage, MetricPoint
from rlft.client.resources import RESTING_STATES, TERMINAL_STATES, Files, Jobs, Rewards

__all__ = [
    "APIConnectionError",
    "APIError",
    "AuthenticationError",
    "Checkpoint",
    "Client",
    "ConflictError",
    "Event",
    "File",
    "Job",
    "JobPage",
    "MetricPoint",
    "NotFoundError",
    "RESTING_STATES",
    "TERMINAL_STATES",
    "ValidationError",
]

DEFAULT_URL = "http://127.0.0.1:8000"
# A create is tried this often (same Idempotency-Key) when its answer is lost or the API is overloaded.
CREATE_ATTEMPTS = 4
RETRY_WAIT_CAP_S = 10.0
_RETRY_STATUSES = frozenset({502, 503, 504})


class Client:
    """The API at ``url`` with the tenant key ``key`` (defaults: RLFT_API_URL, RLFT_API_KEY)."""

    def __init__(
        self,
        url: str | None = None,
        key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ):
        self.url = (url or os.environ.get("RLFT_API_URL") or DEFAULT_URL).rstrip("/")
        self.key = key if key is not None else os.environ.get("RLFT_API_KEY")
        headers = {"User-Agent": "rlft-client/0.1"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)
        self.jobs = Jobs(self)
        self.files = Files(self)
        self.rewards = Rewards(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send one request; return the decoded JSON body, or raise an APIError."""
        resp = self._send(method, path, **kwargs)
        return resp.json() if resp.content else None

    def request_retrying(
        self, method: str, path: str, *, attempts: int = CREATE_ATTEMPTS, **kwargs: Any
    ) -> Any:
        """``request``, tried again when the answer is lost (connection error, timeout) or is a 502/503/504.

        Only for requests that are safe to repeat: a create with an ``Idempotency-Key`` (the same key on
        every try) returns the job of the first try that went through, never a second one. The wait follows
        the API's ``Retry-After`` (capped), else doubles from half a second.
        """
        attempt = 1
        while True:
            try:
                return self.request(method, path, **kwargs)
            except APIError as exc:
                retryable = isinstance(exc, APIConnectionError) or exc.status_code in _RETRY_STATUSES
                if not retryable or attempt >= attempts:
                    raise
                time.sleep(min(exc.retry_after or 0.5 * 2 ** (attempt - 1), RETRY_WAIT_CAP_S))
            attempt += 1

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if resp.status_code >= 400:
            raise error_from_response(resp)
        return resp

    def _unreachable(self, exc: Exception) -> APIConnectionError:
        return APIConnectionError(
            f"cannot reach the API at {self.url} ({type(exc).__name__}: {exc})", code="api_unreachable"
        )

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/healthz")
