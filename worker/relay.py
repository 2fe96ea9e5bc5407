"""The worker's HTTP client for the service's ``/internal/v1`` API, and a buffer that loses nothing.

``ServiceClient`` makes single calls and sorts the outcomes into three kinds: the write was refused
because another worker holds the job (``LeaseLost``, HTTP 409), the service is briefly unreachable
(``ServiceUnavailable``: connection errors, timeouts, 429, 5xx — worth retrying), or the request itself is
wrong (``ServiceRejected``: other 4xx — retrying cannot help).

``Relay`` buffers metrics, events, samples and checkpoint registrations in the order the engine produced
them and sends them in batches. When the service is unreachable it keeps everything and tries again with
exponential backoff and jitter, without blocking the caller; a flush resumes where the last one stopped, so
the service sees every item once and in order (the service makes repeats no-ops anyway).
"""

from __future__ import annotations

import collections
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import httpx
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential, wait_random

from worker.outbox import Kind

log = logging.getLogger(__name__)

# Items per request, per kind: a checkpoint registration is one request each (its body is the item).
# The kinds are the outbox's (worker/outbox.py), each named like the /internal/v1 call that takes it.
BATCH_LIMITS = {Kind.METRICS: 500, Kind.EVENTS: 100, Kind.SAMPLES: 100, Kind.CHECKPOINTS: 1}
# A batch the service answers with HTTP 500 this many times in a row is a poison batch, not an outage
# (outages look like refused connections, 502, 503, 504): it is split, then its bad item dropped.
POISON_AFTER = 3
_LIST_FIELD = {Kind.METRICS: "points", Kind.EVENTS: "events", Kind.SAMPLES: "samples"}


class LeaseLost(Exception):
    """The service refused a fenced call (409): another worker holds the job, or it left the running state."""


class ServiceUnavailable(Exception):
    """The service could not be reached or answered 429/5xx; the same call may succeed later."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status  # None: no answer at all (connection refused, timeout)


class ServiceRejected(Exception):
    """The service answered a 4xx other than 409/429: the request is wrong and a retry cannot help."""


class ServiceClient:
    """One job's calls to ``/internal/v1/jobs/{job_id}/...``, authenticated with the worker secret."""

    def __init__(self, api_url: str, worker_secret: str, job_id: str, *, timeout_s: float = 10.0):
        self.job_id = job_id
        self._http = httpx.Client(
            base_url=f"{api_url.rstrip('/')}/internal/v1/jobs/{job_id}",
            headers={"Authorization": f"Bearer {worker_secret}"},
            timeout=timeout_s,
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def call(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST one call; return the JSON answer or raise one of the three exceptions above."""
        try:
            resp = self._http.post(f"/{action}", json=body)
        except httpx.HTTPError as exc:  # connection refused, reset, timeouts, ...
            raise ServiceUnavailable(f"{action}: {type(exc).__name__}: {exc}") from exc
        if resp.status_code == 409:
            raise LeaseLost(f"{action}: 409 {_detail(resp)}")
        if resp.status_code == 429 or resp.status_code >= 500:
            raise ServiceUnavailable(f"{action}: HTTP {resp.status_code} {_detail(resp)}", resp.status_code)
        if resp.status_code >= 400:
            raise ServiceRejected(f"{action}: HTTP {resp.status_code} {_detail(resp)}")
        return resp.json() if resp.content else {}

    def call_retrying(self, action: str, body: dict[str, Any], *, within_s: float) -> dict[str, Any]:
        """``call`` with exponential backoff on ``ServiceUnavailable`` for up to ``within_s`` seconds."""
        retrying = retry(
            retry=retry_if_exception_type(ServiceUnavailable),
            wait=wait_exponential(multiplier=0.25, max=5.0) + wait_random(0, 0.25),
            stop=stop_after_delay(within_s),
            reraise=True,
        )
        return retrying(self.call)(action, body)


def _detail(resp: httpx.Response) -> str:
    text = resp.text
    return text[:300] + ("…" if len(text) > 300 else "")


class Relay:
    """An ordered buffer of items for the service, flushed in batches, retried with backoff."""

    def __init__(
        self,
        client: ServiceClient,
        fence: int,
        *,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.client = client
        self.fence = fence
        self._queue: collections.deque[tuple[str, dict[str, Any]]] = collections.deque()
        self._backoff_initial = backoff_initial_s
        self._backoff_max = backoff_max_s
        self._clock = clock
        self._failures = 0
        self._errors_500 = 0
        self._singles_left = 0  # after a split: items still to send one per request
        self._next_try = 0.0
        self.last_error: str | None = None
        self.dropped = 0

    def add(self, kind: str, item: dict[str, Any]) -> None:
        if kind not in BATCH_LIMITS:
            raise ValueError(f"unknown relay kind {kind!r}; expected one of {sorted(map(str, BATCH_LIMITS))}")
        self._queue.append((kind, item))

    @property
    def pending(self) -> int:
        return len(self._queue)

    def flush(self) -> bool:
        """Send what is buffered, oldest first; True when the buffer is empty afterwards.

        Never blocks on a down service: while backing off it returns at once. Raises ``LeaseLost``.
        """
        if self._clock() < self._next_try:
            return not self._queue
        while self._queue:
            kind, items = self._next_batch()
            try:
                self.client.call(kind, self._body(kind, items))
            except ServiceUnavailable as exc:
                if not self._poisoned(exc, kind, items):
                    self._back_off(str(exc))
                    return False
            except ServiceRejected as exc:
                # A malformed batch would block everything behind it forever; drop it, loudly.
                self._drop(kind, items, exc)
            else:
                self._singles_left = max(0, self._singles_left - len(items))
                for _ in items:
                    self._queue.popleft()
            self._failures = self._errors_500 = 0
            self.last_error = None
        return True

    def _poisoned(self, exc: ServiceUnavailable, kind: str, items: list[dict[str, Any]]) -> bool:
        """Count repeated 500s on one batch; split it, then drop its single bad item. True when dropped."""
        self._errors_500 = self._errors_500 + 1 if exc.status == 500 else 0
        if self._errors_500 < POISON_AFTER:
            return False
        if len(items) > 1:
            # Send the batch's items one by one: the bad one is found and dropped, the rest go through.
            self._singles_left, self._errors_500, self._failures = len(items), 0, 0
            return False
        self._drop(kind, items, exc)
        return True

    def _drop(self, kind: str, items: list[dict[str, Any]], exc: Exception) -> None:
        log.error(
            "job %s: dropped %d %s the service cannot take: %s", self.client.job_id, len(items), kind, exc
        )
        for _ in items:
            self._queue.popleft()
        self._singles_left = max(0, self._singles_left - len(items))
        self.dropped += len(items)

    def drain(self, timeout_s: float) -> bool:
        """Flush until the buffer is empty or ``timeout_s`` passed; True when everything was sent."""
        deadline = self._clock() + timeout_s
        while not self.flush():
            if self._clock() >= deadline:
                return False
            time.sleep(max(0.0, min(self._next_try, deadline) - self._clock()) + 0.01)
        return True

    def _next_batch(self) -> tuple[str, list[dict[str, Any]]]:
        kind = self._queue[0][0]
        items: list[dict[str, Any]] = []
        for k, item in self._queue:
            if k != kind or len(items) >= (1 if self._singles_left else BATCH_LIMITS[kind]):
                break
            items.append(item)
        return kind, items

    def _body(self, kind: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        if kind == Kind.CHECKPOINTS:
            return {"fence": self.fence, **items[0]}
        return {"fence": self.fence, _LIST_FIELD[kind]: items}

    def _back_off(self, error: str) -> None:
        self._failures += 1
        delay = min(self._backoff_max, self._backoff_initial * 2 ** (self._failures - 1))
        self._next_try = self._clock() + delay * random.uniform(0.5, 1.0)
        if self._failures == 1 or error != self.last_error:
            log.warning(
                "job %s: service unreachable, buffering %d items: %s",
                self.client.job_id,
                len(self._queue),
                error,
            )
        self.last_error = error
