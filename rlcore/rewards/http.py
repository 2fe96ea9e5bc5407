"""The HTTP reward client: protocol ``rlft.reward.v1`` (batched, with ids) and OpenRLHF's remote-RM format.

Built against field notes 3 and 4 (remote reward servers that fail or stall runs, rewards that silently
become 0):
- one pooled ``httpx.AsyncClient`` per client, at most ``max_concurrency`` requests in flight;
- retries with exponential backoff and full jitter on connection errors, timeouts, 429 (honouring
  ``Retry-After``) and 5xx only; any other status fails at once with ``RewardRejected``;
- ``timeout_s`` bounds a whole request (connect to last byte), not each read;
- every response is validated; a bad one is ``RewardInvalid`` saying exactly what was wrong;
- each request carries an ``Idempotency-Key`` naming its body (``idempotency_key``);
- redirects are not followed (a redirect could lead past the URL policy);
- the configured header values are secrets: every error message and item error is scrubbed of them
  (``rlcore.rewards.secrets``), endpoint bodies before they are quoted, and a header the HTTP library
  refuses fails at once (no retry can fix it) with a message that does not show it.

The trainer is synchronous, so the async machinery runs on one event loop in a background thread for the
client's lifetime; ``score()`` submits to it and waits. Async callers (the service's validate endpoint)
use ``ascore()``. Call ``close()`` (or use ``with``) when done.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt
from tenacity import wait_random_exponential as _full_jitter

from rlcore.errors import ConfigError, RewardEndpointUnreachable, RewardInvalid, RewardRejected, RLFTError
from rlcore.rewards.base import RewardBatchResult, RewardItem, latency_metrics, local_run_id
from rlcore.rewards.protocol import parse_response, request_body
from rlcore.rewards.secrets import Scrubber
from rlcore.rewards.urlpolicy import RewardURLPolicy, UnresolvableHost
from rlcore.spec import RewardSpec

T = TypeVar("T")
MAX_RESPONSE_BYTES = 32 * 1024 * 1024
USER_AGENT = "rlft-reward-client/1"
PROTOCOL_HEADERS = frozenset({"content-type", "idempotency-key"})


class _Retryable(Exception):
    """A failed attempt that another attempt may fix; ``retry_after`` is the server's wish in seconds."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


@dataclass
class _CallStats:
    """What one ``score`` call observed, across all its batches and attempts."""

    latencies_ms: list[float] = field(default_factory=list)
    failed_requests: int = 0
    retries: int = 0


class HTTPRewardClient:
    """A ``RewardScorer`` that POSTs the items of a step to ``spec.url`` in batches of ``spec.batch_size``.

    ``url_policy`` (default: public hosts only) is re-checked before each step's requests, the verdict
    cached ``url_check_ttl_s``. The backoff settings exist so that tests run
    fast; production uses the defaults (0.5 s base, 8 s cap, Retry-After honoured up to 30 s).
    """

    def __init__(
        self,
        spec: RewardSpec,
        job_id: str | None = None,
        *,
        url_policy: RewardURLPolicy | None = None,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 8.0,
        retry_after_cap_s: float = 30.0,
        url_check_ttl_s: float = 5.0,
        name: str | None = None,
    ):
        if not spec.url:
            raise ConfigError("no reward URL: set reward.url in the spec")
        self.spec = spec
        self.url = spec.url
        self.scrub = Scrubber.for_headers(spec.header_values())
        self.job_id = job_id or local_run_id()
        # Idempotency keys name the entry too: two entries of one job may share an endpoint.
        self.key_prefix = f"{job_id}/{name}" if name else job_id
        self.url_policy = url_policy or RewardURLPolicy()
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.retry_after_cap_s = retry_after_cap_s
        self.url_check_ttl_s = url_check_ttl_s
        self._url_ok_until = 0.0
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"rlft-reward-{self.job_id}", daemon=True
        )
        self._thread.start()
        self._client, self._semaphore, self._url_lock = self._run(self._open())

    # -- lifetime ---------------------------------------------------------------------------------------

    async def _open(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore, asyncio.Lock]:
        # Created on the background loop: all three bind to the loop they are first used on.
        n = self.spec.max_concurrency
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.spec.timeout_s),
            limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
        )
        return client, asyncio.Semaphore(n), asyncio.Lock()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._run(self._client.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> HTTPRewardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- scoring ----------------------------------------------------------------------------------------

    def score(self, step: int, items: list[RewardItem]) -> RewardBatchResult:
        """Score ``items`` (all of one step); raise ``RewardInvalid`` / ``RewardRejected`` /
        ``RewardEndpointUnreachable`` / ``RewardURLForbidden`` when the step cannot be scored."""
        if self._closed:
            raise RuntimeError("HTTPRewardClient is closed")
        return self._run(self._score(step, items))

    async def ascore(self, step: int, items: list[RewardItem]) -> RewardBatchResult:
        """``score`` for callers that run their own event loop; the work still runs on the client's loop."""
        if self._closed:
            raise RuntimeError("HTTPRewardClient is closed")
        return await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(self._score(step, items), self._loop)
        )

    async def _score(self, step: int, items: list[RewardItem]) -> RewardBatchResult:
        try:
            result = await self._score_batches(step, items)
        except RLFTError as exc:
            # The one way out for errors: whatever raised it, no header value leaves in the message.
            exc.message = self.scrub(exc.message)
            exc.args = (exc.message,)
            raise
        result.errors = [self.scrub(e) if e is not None else None for e in result.errors]
        return result

    async def _score_batches(self, step: int, items: list[RewardItem]) -> RewardBatchResult:
        ids = [item.id for item in items]
        if len(set(ids)) != len(ids):
            raise ValueError("RewardItem ids must be unique within a step")
        stats = _CallStats()
        size = self.spec.batch_size
        batches = [items[i : i + size] for i in range(0, len(items), size)]
        results = await _all_or_first_error(
            [self._score_batch(step, n, batch, stats) for n, batch in enumerate(batches)]
        )
        out = RewardBatchResult(rewards=[], errors=[], components=[])
        for result in results:
            out.rewards += result.rewards
            out.errors += result.errors
            out.components += result.components
        item_errors = sum(e is not None for e in out.errors)
        out.metrics = latency_metrics(
            stats.latencies_ms,
            errors=item_errors + stats.failed_requests,
            retries=stats.retries,
            requests=len(stats.latencies_ms),
        )
        return out

    async def _score_batch(
        self, step: int, n: int, batch: list[RewardItem], stats: _CallStats
    ) -> RewardBatchResult:
        body = request_body(self.spec.protocol, self.job_id, step, uuid.uuid4().hex, batch)
        payload = json.dumps(body, default=str).encode()
        # The protocol's own headers win over configured ones of the same name, whatever their case.
        configured = {k: v for k, v in self.spec.header_values().items() if k.lower() not in PROTOCOL_HEADERS}
        headers = {
            **configured,
            "Content-Type": "application/json",
            "Idempotency-Key": idempotency_key(self.key_prefix, step, n, batch),
        }

        def count_retry(state: RetryCallState) -> None:
            stats.retries += 1

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.spec.max_retries + 1),
            wait=self._backoff,
            retry=retry_if_exception_type(_Retryable),
            before_sleep=count_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    status, text = await self._attempt(payload, headers, stats)
        except _Retryable as exc:
            attempts = self.spec.max_retries + 1
            raise RewardEndpointUnreachable(
                f"reward endpoint {self.url} failed after {attempts} attempt{'s' * (attempts > 1)} "
                f"(step {step}, batch {n}); last: {exc}"
            ) from exc
        return parse_response(
            self.spec.protocol, self.spec.on_error, self.url, status, text, batch, scrub=self.scrub
        )

    async def _attempt(self, payload: bytes, headers: dict[str, str], stats: _CallStats) -> tuple[int, str]:
        """One POST; returns (status, body) of a 2xx answer, raises ``_Retryable`` or ``RewardRejected``."""
        await self._check_url()
        async with self._semaphore:
            started = time.perf_counter()
            try:
                status, response_headers, text = await asyncio.wait_for(
                    self._post(payload, headers), timeout=self.spec.timeout_s
                )
            except (asyncio.TimeoutError, httpx.TimeoutException) as exc:
                stats.failed_requests += 1
                raise _Retryable(f"timed out after {self.spec.timeout_s:g} s") from exc
            except (httpx.LocalProtocolError, UnicodeEncodeError) as exc:
                # The request itself cannot be written, in practice a header: sending again cannot help.
                # The library's text quotes the header, so it is scrubbed and the chain cut.
                raise ConfigError(
                    f"reward.headers cannot be sent ({self.scrub(f'{type(exc).__name__}: {exc}')}); header "
                    "names must be tokens and values visible ASCII without CR, LF or NUL"
                ) from None
            except httpx.TransportError as exc:
                stats.failed_requests += 1
                # Chain cut: the library's exception may quote the request, headers included.
                raise _Retryable(self.scrub(f"{type(exc).__name__}: {exc or 'connection failed'}")) from None
            finally:
                stats.latencies_ms.append((time.perf_counter() - started) * 1000)
        if 200 <= status < 300:
            return status, text
        stats.failed_requests += 1
        snippet = self.scrub(text)[:200]  # scrubbed whole first: a cut value would no longer match
        if status == 429 or status >= 500:
            retry_after = _retry_after_s(response_headers.get("retry-after"))
            raise _Retryable(f"HTTP {status} {snippet!r}", retry_after=retry_after)
        hint = (
            " (redirects are not followed: set reward.url to the final address)"
            if 300 <= status < 400
            else ""
        )
        raise RewardRejected(f"reward endpoint {self.url} answered HTTP {status}{hint}: {snippet!r}")

    async def _post(self, payload: bytes, headers: dict[str, str]) -> tuple[int, httpx.Headers, str]:
        async with self._client.stream("POST", self.url, content=payload, headers=headers) as response:
            chunks: list[bytes] = []
            received = 0
            async for chunk in response.aiter_bytes():
                received += len(chunk)
                if received > MAX_RESPONSE_BYTES:
                    raise RewardInvalid(
                        f"reward endpoint {self.url} answered more than {MAX_RESPONSE_BYTES >> 20} MiB"
                    )
                chunks.append(chunk)
            return response.status_code, response.headers, b"".join(chunks).decode("utf-8", "replace")

    def _backoff(self, state: RetryCallState) -> float:
        wait = _full_jitter(multiplier=self.backoff_base_s, max=self.backoff_cap_s)(state)
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retryable) and exc.retry_after is not None:
            return max(wait, min(exc.retry_after, self.retry_after_cap_s))
        return wait

    async def _check_url(self) -> None:
        """The URL policy, re-run when the last verdict is older than ``url_check_ttl_s``."""
        async with self._url_lock:  # the batches of a step starting together resolve the host once
            if time.monotonic() < self._url_ok_until:
                return
            try:
                # getaddrinfo blocks: keep it off the loop that carries the other batches.
                await asyncio.to_thread(self.url_policy.check, self.url)
            except UnresolvableHost as exc:
                raise _Retryable(str(exc)) from exc
            self._url_ok_until = time.monotonic() + self.url_check_ttl_s


def idempotency_key(prefix: str, step: int, n: int, batch: list[RewardItem]) -> str:
    """``<job>:<step>:<batch>:<digest>``: one key per request body. The digest covers what the items say, so
    a step replayed after a resume with other completions is a new request, the same ones the same."""
    h = hashlib.sha256()
    for item in batch:
        h.update(
            json.dumps(
                [item.id, item.prompt, item.completion, item.label, item.metadata, item.finish_reason],
                default=str,
                sort_keys=True,
            ).encode()
        )
    return f"{prefix}:{step}:{n}:{h.hexdigest()[:16]}"


async def _all_or_first_error(coros: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Run concurrently; on the first failure cancel the rest (no point scoring a failed step) and raise."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    if not tasks:
        return []
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            await asyncio.gather(*tasks, return_exceptions=True)
            raise task.exception()  # type: ignore[misc]
    return [task.result() for task in tasks]


def _retry_after_s(value: str | None) -> float | None:
    """``Retry-After`` as seconds: a number of seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
