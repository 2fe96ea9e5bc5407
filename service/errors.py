"""Errors the API answers with: a status, a machine-readable code, a message for people, maybe a field.

Raised by crud and deps, turned into ``{"detail": {"code", "message", "field"?}}`` by a handler in app.py.
"""

from __future__ import annotations

from starlette.responses import JSONResponse


class ApiError(Exception):
    status_code = 400

    def __init__(
        self,
        message: str,
        *,
        code: str,
        field: str | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.code = code
        self.field = field
        self.headers = headers
        if status_code is not None:
            self.status_code = status_code

    def detail(self) -> dict[str, str]:
        d = {"code": self.code, "message": self.message}
        if self.field:
            d["field"] = self.field
        return d

    def response(self) -> JSONResponse:
        return JSONResponse({"detail": self.detail()}, status_code=self.status_code, headers=self.headers)


class NotFound(ApiError):
    status_code = 404

    def __init__(self, what: str, ident: str):
        super().__init__(f"{what} {ident!r} not found", code="not_found")


class Conflict(ApiError):
    status_code = 409


class Invalid(ApiError):
    status_code = 422

    def __init__(self, message: str, *, field: str, code: str = "invalid"):
        super().__init__(message, code=code, field=field)


class TooLarge(ApiError):
    status_code = 413


class TooManyRequests(ApiError):
    """429: a per-tenant limit (a setting, named in the message); ``Retry-After`` says when to try again."""

    status_code = 429

    def __init__(self, message: str, *, code: str, retry_after_s: int):
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after_s)})


class Unavailable(ApiError):
    """503: the service is at capacity (or its database is); a retry after ``Retry-After`` can succeed."""

    status_code = 503

    def __init__(self, message: str, *, code: str = "overloaded", retry_after_s: int = 1):
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after_s)})
