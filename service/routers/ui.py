"""The dashboard: static files shipped inside the package, served by the API under ``/ui``.

No CDN and no build step: ``service/ui/`` is what the browser gets (pyproject's package data ships it). The
page talks to the public REST and SSE routes with the tenant's key, like any client. Every UI response
carries a Content-Security-Policy that allows scripts from this origin only (no inline script, no eval), so
text a job holds (prompts, completions) could not run even if a page rendered it as markup, which it does not.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
UI_PATH = "/ui"
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Revalidate (ETag) on every load: an upgraded API never serves a page with yesterday's script.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def dashboard_url(api_url: str) -> str:
    """Where a person opens the dashboard of the API at ``api_url`` (printed by `rlft up` and `make demo`)."""
    return f"{api_url.rstrip('/')}{UI_PATH}/"


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse(f"{UI_PATH}/", status_code=307)


class UiFiles(StaticFiles):
    """Static files with the dashboard's security headers on every answer, 404s included."""

    def file_response(self, *args: object, **kwargs: object) -> Response:
        response = super().file_response(*args, **kwargs)  # type: ignore[arg-type]
        response.headers.update(SECURITY_HEADERS)
        return response

    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            response = await super().get_response(path, scope)
        except HTTPException as exc:  # a missing file (404) or a method other than GET/HEAD (405)
            response = JSONResponse(
                {
                    "detail": {
                        "code": "not_found" if exc.status_code == 404 else "invalid",
                        "message": exc.detail,
                    }
                },
                status_code=exc.status_code,
                headers=exc.headers,
            )
        response.headers.update(SECURITY_HEADERS)
        return response


def mount(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(UI_PATH, UiFiles(directory=UI_DIR, html=True), name="ui")
