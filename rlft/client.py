"""A small typed Python client for the rlft REST API (architecture.md, "REST surface").

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

import json
import os
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
# A paused job keeps its stream open on the server side, but a follower has nothing more to wait for.
RESTING_STATES = TERMINAL_STATES | {"paused"}
# A create is tried this often (same Idempotency-Key) when its answer is lost or the API is overloaded.
CREATE_ATTEMPTS = 4
RETRY_WAIT_CAP_S = 10.0
_RETRY_STATUSES = frozenset({502, 503, 504})


# ----------------------------------------------------------------------------------------------- errors
class APIError(Exception):
    """The API answered with an error (4xx/5xx)."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        body: Any = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.body = body
        self.retry_after = retry_after  # seconds, from a 429/503's Retry-After header


class APIConnectionError(APIError):
    """The API could not be reached (refused, DNS, timeout)."""


class AuthenticationError(APIError):
    """401/403: the key is missing, wrong or revoked."""


class NotFoundError(APIError):
    """404: no such job, file or checkpoint (for this tenant)."""


class ConflictError(APIError):
    """409: an illegal state change (e.g. cancelling a finished job)."""


class ValidationError(APIError):
    """400/422: the request (usually the spec) was refused; ``message`` names the field and the reason."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: ValidationError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    422: ValidationError,
}


def _error_from_response(resp: httpx.Response) -> APIError:
    try:
        body: Any = resp.json()
    except ValueError:
        body = resp.text
    code, message = _parse_error_body(body)
    cls = _BY_STATUS.get(resp.status_code, APIError)
    return cls(
        message or f"HTTP {resp.status_code}",
        status_code=resp.status_code,
        code=code,
        body=body,
        retry_after=_retry_after(resp.headers.get("Retry-After")),
    )


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: the caller's own backoff applies


def _parse_error_body(body: Any) -> tuple[str | None, str]:
    """Read the error shapes a FastAPI service answers: ours ({error: {code, message}}) and FastAPI's."""
    if not isinstance(body, dict):
        return None, str(body or "").strip()[:500]
    err = body.get("error")
    if isinstance(err, dict):
        return err.get("code"), str(err.get("message") or err)
    detail = body.get("detail", body.get("message"))
    if isinstance(detail, dict):
        message, field = str(detail.get("message") or detail), detail.get("field")
        if field and not message.startswith(str(field)):
            message = f"{field}: {message}"
        return detail.get("code"), message
    if isinstance(detail, list):  # FastAPI's request validation errors: name the field, then the reason
        parts = []
        for d in detail:
            loc = ".".join(str(p) for p in d.get("loc", []) if p not in ("body", "query", "path"))
            parts.append(f"{loc}: {d.get('msg')}" if loc else str(d.get("msg")))
        return body.get("code") or "invalid_request", "; ".join(parts)
    return body.get("code"), str(detail) if detail is not None else json.dumps(body)[:500]


# ----------------------------------------------------------------------------------------------- models
class _Model(BaseModel):
    # The service may add fields; a client must not break when it does.
    model_config = ConfigDict(extra="allow")


class Job(_Model):
    id: str
    status: str
    model: str | None = None
    spec: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    latest_metrics: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    created_at: str | None = None
    updated_at: str | None = None
    metadata: dict[str, Any] | None = None

    @property
    def total_steps(self) -> int | None:
        """Steps the job will run: from progress when the worker reported it, else from the spec."""
        for source in (self.progress or {}, (self.spec or {}).get("hyperparameters") or {}):
            for key in ("total_steps", "steps"):
                if isinstance(source.get(key), int) and source[key] > 0:
                    return source[key]
        return None

    @property
    def step(self) -> int:
        value = (self.progress or {}).get("step")
        return value if isinstance(value, int) else 0


class JobPage(_Model):
    data: list[Job]
    has_more: bool = False
    next_after: str | None = None  # pass as ``after`` for the next page


class MetricPoint(_Model):
    step: int
    name: str
    value: float


class Event(_Model):
    id: str | int | None = None
    created_at: str | None = None
    level: str = "info"
    type: str = "message"
    message: str = ""
    data: Any = None

    def metrics(self) -> tuple[int | None, dict[str, float]]:
        """For a ``metrics`` event: (step, {name: value}); tolerant of the flat shape {step, name: value}."""
        data = self.data if isinstance(self.data, dict) else {}
        step = data.get("step")
        values = data.get("metrics")
        if not isinstance(values, dict):
            values = {k: v for k, v in data.items() if k != "step" and isinstance(v, (int, float))}
        return (step if isinstance(step, int) else None), {k: float(v) for k, v in values.items()}

    def status(self) -> str | None:
        """For a ``status`` event: the job's new state."""
        if isinstance(self.data, dict) and isinstance(self.data.get("status"), str):
            return self.data["status"]
        return None


class Checkpoint(_Model):
    id: str
    step: int
    size_bytes: int | None = None
    created_at: str | None = None
    metrics: dict[str, Any] | None = None
    best: bool = False
    deleted: bool = False


class File(_Model):
    id: str
    filename: str | None = None
    bytes: int | None = None
    rows: int | None = None


# ----------------------------------------------------------------------------------------------- client
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
            raise _error_from_response(resp)
        return resp

    def _unreachable(self, exc: Exception) -> APIConnectionError:
        return APIConnectionError(
            f"cannot reach the API at {self.url} ({type(exc).__name__}: {exc})", code="api_unreachable"
        )

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/healthz")


class _Resource:
    def __init__(self, client: Client):
        self._c = client


def _spec_body(spec: Any) -> dict[str, Any]:
    """A spec as a JSON body: a JobSpec keeps its secret header values (the service encrypts them)."""
    if isinstance(spec, (str, Path)):
        from rlcore.spec import load_spec_data

        spec = load_spec_data(spec)
    if hasattr(spec, "secret_dict"):
        return spec.secret_dict()
    if isinstance(spec, Mapping):
        return dict(spec)
    raise TypeError("spec must be a JobSpec, a dict or a path to a YAML/JSON file")


class Jobs(_Resource):
    def create(self, spec: Any, *, idempotency_key: str | None = None) -> Job:
        """Submit a job. A retry with the same ``idempotency_key`` returns the same job, not a second one.

        Without a key, one is made for this call and kept across its own retries (a lost answer, an
        overloaded API's 503): the call creates one job at most, however often it has to try.
        """
        key = idempotency_key or str(uuid.uuid4())
        body = self._c.request_retrying(
            "POST", "/v1/jobs", json=_spec_body(spec), headers={"Idempotency-Key": key}
        )
        return Job.model_validate(body)

    def get(self, job_id: str) -> Job:
        return Job.model_validate(self._c.request("GET", f"/v1/jobs/{job_id}"))

    def list(
        self,
        *,
        status: str | None = None,
        limit: int | None = None,
        after: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> JobPage:
        params: dict[str, Any] = {"status": status, "limit": limit, "after": after}
        params.update({f"metadata.{k}": v for k, v in (metadata or {}).items()})
        body = self._c.request("GET", "/v1/jobs", params={k: v for k, v in params.items() if v is not None})
        if isinstance(body, list):  # tolerate a bare list
            body = {"data": body}
        return JobPage.model_validate(body)

    def cancel(self, job_id: str) -> Job:
        return Job.model_validate(self._c.request("POST", f"/v1/jobs/{job_id}/cancel"))

    def pause(self, job_id: str) -> Job:
        return Job.model_validate(self._c.request("POST", f"/v1/jobs/{job_id}/pause"))

    def resume(self, job_id: str) -> Job:
        return Job.model_validate(self._c.request("POST", f"/v1/jobs/{job_id}/resume"))

    def metrics(
        self,
        job_id: str,
        *,
        after_step: int | None = None,
        names: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[MetricPoint]:
        params: dict[str, Any] = {"after_step": after_step, "limit": limit}
        params = {k: v for k, v in params.items() if v is not None}
        if names:
            params["names"] = ",".join(names)
        body = self._c.request("GET", f"/v1/jobs/{job_id}/metrics", params=params)
        return [MetricPoint.model_validate(p) for p in _items(body)]

    def events(self, job_id: str, *, after: str | int | None = None, limit: int | None = None) -> list[Event]:
        params = {k: v for k, v in {"after": after, "limit": limit}.items() if v is not None}
        body = self._c.request("GET", f"/v1/jobs/{job_id}/events", params=params)
        return [Event.model_validate(e) for e in _items(body)]

    def iter_events(self, job_id: str, *, after: str | int | None = None) -> Iterator[Event]:
        """Every event after ``after`` (default: all), fetching page after page."""
        while True:
            body = self._c.request(
                "GET", f"/v1/jobs/{job_id}/events", params={} if after is None else {"after": after}
            )
            page = [Event.model_validate(e) for e in _items(body)]
            yield from page
            if not page or not (isinstance(body, dict) and body.get("has_more")):
                return
            after = page[-1].id

    def samples(self, job_id: str, *, step: int | None = None, split: str = "train") -> list[dict[str, Any]]:
        """A step's samples (default: the newest step); ``split="eval"``: the held-out evaluation's."""
        params: dict[str, Any] = {"split": split}
        if step is not None:
            params["step"] = step
        return _items(self._c.request("GET", f"/v1/jobs/{job_id}/samples", params=params))

    def checkpoints(self, job_id: str, *, best: bool = False) -> list[Checkpoint]:
        """The job's checkpoints by step (those retention deleted too, ``deleted``); ``best``: the best."""
        params = {"best": "true"} if best else {}
        body = self._c.request("GET", f"/v1/jobs/{job_id}/checkpoints", params=params)
        return sorted((Checkpoint.model_validate(c) for c in _items(body)), key=lambda c: c.step)

    def stream_events(
        self,
        job_id: str,
        *,
        last_event_id: str | None = None,
        reconnect: bool = True,
        max_reconnects: int = 20,
        stop_at_rest: bool = True,
    ) -> Iterator[Event]:
        """Follow the job's Server-Sent Events; yield each event once, in order.

        A dropped connection is resumed with ``Last-Event-ID`` so that no point is lost or repeated. The
        iterator ends when the job reaches a resting state (succeeded, failed, cancelled, paused) or the
        server closes the stream of a finished job.
        """
        follower = _SSEFollower(self._c, job_id, last_event_id)
        failures = 0
        while True:
            try:
                for event in follower.read_once():
                    failures = 0
                    yield event
                    if stop_at_rest and self._rests(job_id, event):
                        return
            except (httpx.TransportError, APIConnectionError) as exc:
                failures += 1
                if not reconnect or failures > max_reconnects:
                    raise self._c._unreachable(exc) from exc
                time.sleep(min(0.2 * 2**failures, 5.0))
                continue
            # The server ended the stream cleanly: done if the job rests, else pick up where we left off.
            if not reconnect or self.get(job_id).status in RESTING_STATES:
                yield from follower.drain()
                return
            time.sleep(0.2)

    def _rests(self, job_id: str, event: Event) -> bool:
        """Is this status event where following ends? A replayed "paused" may have been resumed since:
        it ends the stream only when nothing came after it."""
        status = event.status() if event.type == "status" else None
        if status in TERMINAL_STATES:
            return True
        return status in RESTING_STATES and not self.events(job_id, after=event.id, limit=1)

    def download_checkpoint(
        self,
        job_id: str,
        dest: str | os.PathLike,
        *,
        step: int | None = None,
        checkpoint_id: str | None = None,
        best: bool = False,
        merged: bool = False,
    ) -> Path:
        """Write a checkpoint's Hugging Face model directory to ``dest``; the newest unless ``step``, or
        ``best`` (the best by the job's ``checkpoints.best_metric``).

        ``merged``: the LoRA model merged into its base (a job with ``model.merge_lora_on_save``), not the
        adapter. ``dest`` is then loadable with ``AutoModelForCausalLM.from_pretrained(dest)``. The archive
        is streamed to a temporary file first, so a model larger than memory downloads too.
        """
        ckpt_id = (
            checkpoint_id
            or (self._best_checkpoint(job_id) if best else self._pick_checkpoint(job_id, step)).id
        )
        out = Path(dest)
        out.mkdir(parents=True, exist_ok=True)
        query = "?variant=merged" if merged else ""
        with tempfile.TemporaryFile(dir=out) as tmp:
            self._stream_to(f"/v1/jobs/{job_id}/checkpoints/{ckpt_id}/archive{query}", tmp)
            tmp.seek(0)
            with tarfile.open(fileobj=tmp, mode="r:*") as tar:
                # "data" refuses absolute paths, links that leave dest, and devices.
                tar.extractall(out, members=_strip_root(tar.getmembers()), filter="data")
        return out

    def _stream_to(self, path: str, f: Any) -> None:
        try:
            with self._c._http.stream("GET", path) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise _error_from_response(resp)
                for chunk in resp.iter_bytes(1 << 20):
                    f.write(chunk)
        except httpx.TransportError as exc:
            raise self._c._unreachable(exc) from exc

    def _best_checkpoint(self, job_id: str) -> Checkpoint:
        found = self.checkpoints(job_id, best=True)
        if not found:
            raise NotFoundError(f"job {job_id} has no checkpoint yet", status_code=404, code="not_found")
        return found[-1]

    def _pick_checkpoint(self, job_id: str, step: int | None) -> Checkpoint:
        ckpts = self.checkpoints(job_id)
        if not ckpts:
            raise NotFoundError(f"job {job_id} has no checkpoint yet", status_code=404, code="not_found")
        if step is None:
            return ckpts[-1]
        for c in ckpts:
            if c.step == step:
                return c
        have = ", ".join(str(c.step) for c in ckpts)
        raise NotFoundError(
            f"job {job_id} has no checkpoint at step {step} (steps: {have})",
            status_code=404,
            code="not_found",
        )


class _SSEFollower:
    """One job's event stream across reconnections; remembers the last event id it yielded."""

    def __init__(self, client: Client, job_id: str, last_event_id: str | None):
        self._c = client
        self._path = f"/v1/jobs/{job_id}/events/stream"
        self._job_id = job_id
        self.last_event_id = last_event_id

    def read_once(self) -> Iterator[Event]:
        headers = {"Accept": "text/event-stream"}
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = str(self.last_event_id)
        # No read timeout: a quiet job may send nothing but keep-alive comments for a long while.
        timeout = httpx.Timeout(self._c._http.timeout.connect or 10.0, read=None)
        with self._c._http.stream("GET", self._path, headers=headers, timeout=timeout) as resp:
            if resp.status_code >= 400:
                resp.read()
                raise _error_from_response(resp)
            for sse_id, data in _parse_sse(resp.iter_lines()):
                event = _decode_event(sse_id, data)
                if event is None:
                    continue
                if sse_id is not None:
                    self.last_event_id = sse_id
                yield event

    def drain(self) -> Iterator[Event]:
        """Events written between the stream's close and the job's end (polling, after the last id)."""
        for event in Jobs(self._c).iter_events(self._job_id, after=self.last_event_id):
            if event.id is not None:
                self.last_event_id = str(event.id)
            yield event


def _strip_root(members: list[tarfile.TarInfo]) -> list[tarfile.TarInfo]:
    """Drop the archive's single top-level folder, if it has one, so that files land directly in dest."""
    tops = {m.name.split("/", 1)[0] for m in members}
    if len(tops) != 1 or not all("/" in m.name for m in members if not m.isdir()):
        return members
    prefix = tops.pop() + "/"
    kept = []
    for m in members:
        if m.name.startswith(prefix):
            m.name = m.name[len(prefix) :]
            kept.append(m)
    return kept


def _parse_sse(lines: Iterable[str]) -> Iterator[tuple[str | None, str]]:
    """Yield (id, data) per dispatched SSE event (WHATWG rules: blank line dispatches, ':' comments)."""
    data: list[str] = []
    event_id: str | None = None
    for line in lines:
        if not line:
            if data:
                yield event_id, "\n".join(data)
            data, event_id = [], None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            data.append(value)
        elif field == "id":
            event_id = value
    if data:
        yield event_id, "\n".join(data)


def _decode_event(sse_id: str | None, data: str) -> Event | None:
    try:
        payload = json.loads(data)
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    if payload.get("id") is None and sse_id is not None:
        payload["id"] = sse_id
    return Event.model_validate(payload)


def _items(body: Any) -> list[Any]:
    """A list endpoint's items, whether answered bare or wrapped as {data: [...]} / {items: [...]}."""
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        for key in ("data", "items", "points", "events", "checkpoints", "samples"):
            if isinstance(body.get(key), list):
                return body[key]
    return []


class Files(_Resource):
    def upload(self, path: str | os.PathLike) -> File:
        """Upload a JSONL dataset ({"prompt": ..., "label": ...} a line); use the id as dataset.file_id."""
        p = Path(path)
        with p.open("rb") as f:
            body = self._c.request("POST", "/v1/files", files={"file": (p.name, f, "application/jsonl")})
        return File.model_validate(body)

    def get(self, file_id: str) -> File:
        return File.model_validate(self._c.request("GET", f"/v1/files/{file_id}"))


class Rewards(_Resource):
    def validate(
        self,
        reward: Any = None,
        items: list[dict[str, Any]] | None = None,
        *,
        rewards: list[Any] | None = None,
    ) -> dict[str, Any]:
        """Dry-run a reward endpoint (``reward``), or a job's list of endpoints and graders (``rewards``), on
        sample items before any GPU is spent; the answer shows each component by name."""
        if hasattr(reward, "model_dump"):
            reward = {**reward.model_dump(mode="json"), "headers": reward.header_values()}
        body: dict[str, Any] = (
            {"reward": reward} if rewards is None else {"rewards": [_entry(e) for e in rewards]}
        )
        if items is not None:
            body["items"] = items
        return self._c.request("POST", "/v1/rewards/validate", json=body)


def _entry(entry: Any) -> Any:
    """A ``rewards`` entry as JSON, an http entry's header values in clear (the service needs them)."""
    if not hasattr(entry, "model_dump"):
        return entry
    data = entry.model_dump(mode="json", by_alias=True)
    if hasattr(entry, "header_values"):
        data["headers"] = entry.header_values()
    return data
