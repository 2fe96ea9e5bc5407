"""The errors of :class:`rlft.client.Client`: every error answer of the API becomes an :class:`APIError` (or a
subclass) carrying the HTTP status, the machine-readable code and a message for a person."""

from __future__ import annotations

import json
from typing import Any

import httpx


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


def error_from_response(resp: httpx.Response) -> APIError:
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
