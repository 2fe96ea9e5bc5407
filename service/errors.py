"""Errors the API answers with: a status, a machine-readable code, a message for people, maybe a field.

Raised by crud and deps, turned into ``{"detail": {"code", "message", "field"?}}`` by a handler in app.py.
"""

from __future__ import annotations


class ApiError(Exception):
    status_code = 400

    def __init__(self, message: str, *, code: str, field: str | None = None, status_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.field = field
        if status_code is not None:
            self.status_code = status_code

    def detail(self) -> dict[str, str]:
        d = {"code": self.code, "message": self.message}
        if self.field:
            d["field"] = self.field
        return d


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
