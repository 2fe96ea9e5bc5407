"""A real HTTP server for tests: uvicorn serving an ASGI app in a thread of this process."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


class ServerThread:
    """uvicorn serving ``app`` in a thread, on a free port of 127.0.0.1 held from the start (no race)."""

    def __init__(self, app: Any, *, lifespan: str = "auto"):
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan=lifespan)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self._sock.close()


@contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """Serve ``app`` (without its lifespan events) for the ``with`` block; yield its base URL."""
    with ServerThread(app, lifespan="off") as server:
        yield server.url
