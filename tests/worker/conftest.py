"""A small recording HTTP server standing in for the far end of the worker's HTTP client.

It answers what each test scripts (status codes in order), records every request, and can be started
after the client began sending, which is how a briefly unreachable service looks from the worker.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlft_contracts.localproc import free_port


class RecordingServer:
    def __init__(self, port: int):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.requests: list[tuple[str, dict, dict]] = []  # (path, headers, body)
        self.script: list[int] = []  # statuses to answer first, in order; then 200
        self.replies: dict[str, list[tuple[int, dict]]] = {}  # per last path segment: (status, body) queue
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                status, reply = 200, {"accepted": 1, "action": "continue"}
                scripted = owner.replies.get(self.path.rsplit("/", 1)[-1])
                if scripted:
                    status, reply = scripted.pop(0)
                elif owner.script:
                    status = owner.script.pop(0)
                owner.requests.append((self.path, dict(self.headers), body))
                payload = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def actions(self) -> list[str]:
        return [path.rsplit("/", 1)[-1] for path, _, _ in self.requests]

    def ok_bodies(self, path_suffix: str) -> list[dict]:
        return [body for path, _, body in self.requests if path.endswith(path_suffix)]


@pytest.fixture
def recording_server():
    server = RecordingServer(free_port())
    yield server
    server.stop()
