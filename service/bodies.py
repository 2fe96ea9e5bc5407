"""JSON request bodies of the public API: bounded in size before they are read, and in depth when parsed.

FastAPI reads and parses a JSON body before any dependency runs; these classes make that read stop at
``RLFT_MAX_INLINE_SPEC_BYTES`` (a job spec with an inline dataset, a dry run's items) and turn JSON nested
past the parser's recursion limit into a 422 instead of a generic 400. Routers opt in with
``APIRouter(route_class=BoundedJSONRoute)``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute

from rlcore.spec import MAX_JSON_DEPTH


def _too_large(limit: int) -> HTTPException:
    return HTTPException(
        413,
        detail={
            "code": "request_too_large",
            "message": (
                f"the request body is larger than {limit} bytes (RLFT_MAX_INLINE_SPEC_BYTES): upload a "
                "large dataset with POST /v1/files and give its id as dataset.file_id; send a dry run "
                "fewer or shorter items"
            ),
        },
    )


class BoundedJSONRequest(Request):
    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            limit: int = self.app.state.settings.max_inline_spec_bytes
            length = self.headers.get("content-length", "")
            if length.isdigit() and int(length) > limit:
                raise _too_large(limit)
            chunks, size = [], 0
            # A chunked body carries no length: count as it arrives and stop at the limit.
            async for chunk in self.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
            self._body = b"".join(chunks)
        return self._body

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = json.loads(await self.body())
            except json.JSONDecodeError:
                raise  # FastAPI answers it as a 422 with the position
            except ValueError:
                # Not UTF-8, or an integer beyond Python's 4,300-digit conversion limit.
                raise HTTPException(
                    422,
                    detail={
                        "code": "json_invalid",
                        "message": "the body is not JSON: send UTF-8 text (integers up to 4,300 digits)",
                    },
                ) from None
            except RecursionError:
                raise HTTPException(
                    422,
                    detail={
                        "code": "json_too_deep",
                        "message": f"the JSON body nests too deeply: at most {MAX_JSON_DEPTH} levels",
                    },
                ) from None
        return self._json


class BoundedJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            return await handler(BoundedJSONRequest(request.scope, request.receive))

        return bounded
