"""The API's resources as the client's attributes: ``client.jobs``, ``client.files``, ``client.rewards``."""

from __future__ import annotations

import os
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from rlft.client.errors import APIConnectionError, NotFoundError, error_from_response
from rlft.client.models import Checkpoint, Event, File, Job, JobPage, MetricPoint
from rlft.client.sse import decode_event, parse_sse

if TYPE_CHECKING:
    from rlft.client import Client

TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
# A paused job keeps its stream open on the server side, but a follower has nothing more to wait for.
RESTING_STATES = TERMINAL_STATES | {"paused"}


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
                    raise error_from_response(resp)
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
                raise error_from_response(resp)
            for sse_id, data in parse_sse(resp.iter_lines()):
                event = decode_event(sse_id, data)
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
