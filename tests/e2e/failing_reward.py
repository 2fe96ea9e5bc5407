"""A reward endpoint that answers 500 to every request: the job must fail with a clear error, not hang."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

app = FastAPI(title="always 500")


@app.post("/")
async def score() -> JSONResponse:
    return JSONResponse({"detail": "the grader is down"}, status_code=500)
