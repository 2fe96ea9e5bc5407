"""Admission under load: bounded requests in flight, a separate budget for workers, dry-run slots per tenant.

Every sync route runs in AnyIO's thread pool and may hold one pooled database connection. Without a bound,
a burst queues hundreds of requests on the threads and the pool, each waits out the pool's timeout, and all
of them fail late (a 500 after the pool's 30 s; a worker's heartbeat stuck behind them loses its lease). So:

- :class:`AdmissionMiddleware` lets at most ``RLFT_MAX_REQUESTS_IN_FLIGHT`` public requests in at once; as
  many more wait up to ``RLFT_ADMISSION_WAIT_S`` for a slot, the rest answer 503 + ``Retry-After`` at once.
  Worker calls (``/internal/``) and the operator's ``/readyz`` and ``/metrics`` draw on their own budget
  (``RLFT_MAX_WORKER_REQUESTS_IN_FLIGHT``, with its own database pool), so public traffic cannot starve
  heartbeats. A slot is held until the response starts: an SSE stream or a download does not hold one for
  its whole body, and a route that has finished with the database may hand its slot back early
  (:func:`release_admission`, used by the reward dry run before it waits on the endpoint).
- :class:`DryRunSlots` bounds reward dry runs in flight per tenant (429) and over all tenants (503).

The budgets are per API process; service/app.py sizes the thread pool and the database pools from them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import TooManyRequests, Unavailable

_RELEASE_KEY = "rlft.release_admission"
# Answered without a slot: no database, no thread.
_EXEMPT = frozenset({"/healthz"})
# The operator's calls share the workers' budget: a readiness probe must not fail because users are busy.
_OPERATOR = frozenset({"/readyz", "/metrics"})
OVERLOAD_RETRY_AFTER_S = 1
DRY_RUN_RETRY_AFTER_S = 5


class Gate:
    """``slots`` requests at once; as many more may wait up to ``wait_s`` for one; the rest are refused now.

    Refusing at once past a short queue keeps a 503 fast under a burst: waiting longer only makes every
    client slower, it does not serve more of them.
    """

    def __init__(self, slots: int, wait_s: float, setting: str):
        self.slots = slots
        self.wait_s = wait_s
        self.setting = setting
        self._semaphore = asyncio.Semaphore(slots)
        self._waiting = 0

    async def acquire(self) -> bool:
        if self._semaphore.locked() and self._waiting >= self.slots:
            return False
        self._waiting += 1
        try:
            async with asyncio.timeout(self.wait_s):
                await self._semaphore.acquire()
            return True
        except TimeoutError:
            return False
        finally:
            self._waiting -= 1

    def release(self) -> None:
        self._semaphore.release()

    def refusal(self) -> Unavailable:
        return Unavailable(
            f"the API is serving its limit of {self.slots} requests at once ({self.setting}); "
            f"retry after {OVERLOAD_RETRY_AFTER_S} s",
            retry_after_s=OVERLOAD_RETRY_AFTER_S,
        )


class AdmissionMiddleware:
    def __init__(self, app: ASGIApp, public: Gate, internal: Gate):
        self.app = app
        self.public = public
        self.internal = internal

    def _gate(self, path: str) -> Gate | None:
        if path in _EXEMPT:
            return None
        if path.startswith("/internal/") or path in _OPERATOR:
            return self.internal
        return self.public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gate = self._gate(scope["path"]) if scope["type"] == "http" else None
        if gate is None:
            await self.app(scope, receive, send)
            return
        if not await gate.acquire():
            # The request's body is left unread: the connection cannot be reused safely, so it closes.
            refusal = gate.refusal().response()
            refusal.headers["Connection"] = "close"
            await refusal(scope, receive, send)
            return
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                gate.release()

        async def send_releasing(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                release()
            await send(message)

        scope[_RELEASE_KEY] = release
        try:
            await self.app(scope, receive, send_releasing)
        finally:
            release()


def release_admission(request: Request) -> None:
    """Give the request's slot back early: it holds no thread and no database connection from here on."""
    release: Callable[[], None] | None = request.scope.get(_RELEASE_KEY)
    if release is not None:
        release()


class DryRunSlots:
    """Reward dry runs in flight: ``per_tenant`` for each tenant (then 429), ``total`` in all (then 503).

    Counted on the event loop only (no awaits between the check and the count), so no lock is needed.
    """

    def __init__(self, per_tenant: int, total: int):
        self.per_tenant = per_tenant
        self.total = total
        self._by_tenant: collections.Counter[str] = collections.Counter()

    @contextlib.contextmanager
    def hold(self, tenant_id: str) -> Iterator[None]:
        if self._by_tenant[tenant_id] >= self.per_tenant:
            raise TooManyRequests(
                f"you have {self.per_tenant} reward dry runs in flight, the most one tenant may have "
                f"(RLFT_MAX_DRY_RUNS_PER_TENANT); wait for one to finish, or retry after "
                f"{DRY_RUN_RETRY_AFTER_S} s",
                code="too_many_dry_runs",
                retry_after_s=DRY_RUN_RETRY_AFTER_S,
            )
        if sum(self._by_tenant.values()) >= self.total:
            raise Unavailable(
                f"the API is running its limit of {self.total} reward dry runs "
                f"(RLFT_MAX_DRY_RUNS_IN_FLIGHT); retry after {DRY_RUN_RETRY_AFTER_S} s",
                retry_after_s=DRY_RUN_RETRY_AFTER_S,
            )
        self._by_tenant[tenant_id] += 1
        try:
            yield
        finally:
            self._by_tenant[tenant_id] -= 1
            if self._by_tenant[tenant_id] <= 0:
                del self._by_tenant[tenant_id]
