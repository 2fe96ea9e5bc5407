"""A real HTTP server for tests: uvicorn serving an ASGI app in a thread, on a free port of 127.0.0.1."""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn

from rlft.localproc import free_port


class ServerThread:
    """uvicorn serving an app in this process, on a free port of 127.0.0.1."""

    def __init__(self, app: Any):
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
