"""A misbehaving reward server for the client's tests: a real FastAPI app on a real uvicorn socket.

The path picks the behaviour (``/ok``, ``/idempotent`` which replays a key's first answer,
``/slow``, ``/flaky?fail=2``, ``/status/400``, ``/nan``,
``/echo/401`` which quotes the request's headers, ...); the server records every request (path, headers,
body) and the most requests it had in flight at once, so tests can assert what arrived and how often.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse

from tests.support.servers import serve_app


@dataclass
class ServerState:
    requests: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.in_flight = self.max_in_flight = 0

    def seen(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path]


def _reward(completion: str) -> float:
    # Deterministic and easy to assert: one tenth of the completion's length.
    return len(completion) / 10


def _items_answer(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"id": i["id"], "reward": _reward(i["completion"]), "components": {"len": len(i["completion"])}}
        for i in body["items"]
    ]


# One small route a behaviour, all closures over ``state``: split up, they would only be harder to find.
def make_app(state: ServerState) -> FastAPI:  # noqa: C901
    app = FastAPI()

    @app.middleware("http")
    async def record(request: Request, call_next):
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        with state.lock:
            state.requests.append(
                {
                    "path": request.url.path,
                    "headers": dict(request.headers),
                    "body": body,
                    "at": time.monotonic(),
                }
            )
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            return await call_next(request)
        finally:
            with state.lock:
                state.in_flight -= 1

    def count(path: str) -> int:
        return len(state.seen(path))

    @app.post("/ok")
    async def ok(request: Request, delay_ms: float = 0):
        await asyncio.sleep(delay_ms / 1000)
        return {"items": _items_answer(await request.json())}

    stored: dict[str, Any] = {}

    @app.post("/idempotent")
    async def idempotent(request: Request):
        # As a server that honours Idempotency-Key does: a key seen before gets its first answer again.
        key = request.headers.get("idempotency-key", "")
        if key not in stored:
            stored[key] = {"items": _items_answer(await request.json())}
        return stored[key]

    @app.post("/bare")
    async def bare(request: Request):
        return {"rewards": [_reward(i["completion"]) for i in (await request.json())["items"]]}

    @app.post("/slow")
    async def slow(request: Request, sleep_s: float = 5):
        await asyncio.sleep(sleep_s)
        return {"items": _items_answer(await request.json())}

    @app.post("/flaky")
    async def flaky(request: Request, fail: int = 2, status: int = 503):
        if count("/flaky") <= fail:
            return Response(f"try later ({status})", status_code=status)
        return {"items": _items_answer(await request.json())}

    @app.post("/ratelimit")
    async def ratelimit(request: Request, retry_after: str = "0.3"):
        if count("/ratelimit") == 1:
            return Response("slow down", status_code=429, headers={"Retry-After": retry_after})
        return {"items": _items_answer(await request.json())}

    @app.post("/status/{code}")
    async def status(code: int):
        return Response(f"nope: the token is wrong ({code}) " + "x" * 300, status_code=code)

    @app.post("/wrong_length")
    async def wrong_length(request: Request):
        items = (await request.json())["items"]
        return {"rewards": [0.5] * (len(items) - 1)}

    @app.post("/nan")
    async def nan(request: Request):
        items = _items_answer(await request.json())
        items[-1]["reward"] = float("nan")
        return Response(json.dumps({"items": items}), media_type="application/json")  # json allows NaN

    @app.post("/nonjson")
    async def nonjson():
        return Response("<html><body>Welcome to nginx</body></html>", media_type="text/html")

    @app.post("/missing_id")
    async def missing_id(request: Request):
        return {"items": _items_answer(await request.json())[:-1]}

    @app.post("/duplicate_id")
    async def duplicate_id(request: Request):
        items = _items_answer(await request.json())
        return {"items": items + items[:1]}

    @app.post("/unknown_id")
    async def unknown_id(request: Request):
        items = _items_answer(await request.json())
        items[0]["id"] = "not-sent"
        return {"items": items}

    @app.post("/item_error")
    async def item_error(request: Request):
        items = _items_answer(await request.json())
        body = await request.json()
        for answer, sent in zip(items, body["items"], strict=True):
            if "bad" in sent["completion"]:
                answer.update(reward=None, error="cannot parse the answer")
        return JSONResponse({"items": items})

    @app.post("/redirect")
    async def redirect():
        return RedirectResponse("/ok", status_code=307)

    # Endpoints that echo the request's headers back (a debug page, a proxy's error page, a careless log
    # line): where the client quotes what it got, the header values must not come out.
    @app.post("/echo/{code}")
    async def echo(request: Request, code: int, pad: int = 0):
        auth = request.headers.get("authorization")
        text = f"{'x' * pad}denied, you sent authorization={auth!r}; all: {dict(request.headers)!r}"
        return Response(text, status_code=code)

    @app.post("/echo_items")
    async def echo_items(request: Request, where: str = "error"):
        auth = request.headers.get("authorization", "")
        answers = _items_answer(await request.json())
        for answer in answers:
            if where == "error":
                answer.update(reward=None, error=f"refused the credentials {auth!r} for this item")
            else:  # a string where the reward belongs: the client quotes bad values, cut
                answer.update(reward="x" * 40 + auth)
        return JSONResponse({"items": answers})

    @app.post("/openrlhf")
    async def openrlhf(request: Request):
        body = await request.json()
        rewards = [_reward(q) for q in body["query"]]
        return {
            "rewards": rewards,
            "scores": rewards,
            "extra_logs": {"qlen": [len(q) for q in body["query"]]},
        }

    return app


@dataclass
class RunningServer:
    base_url: str
    state: ServerState

    def url(self, path: str) -> str:
        return self.base_url + path


@contextmanager
def misbehaving_server() -> Iterator[RunningServer]:
    state = ServerState()
    with serve_app(make_app(state)) as base_url:
        yield RunningServer(base_url, state)


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"
