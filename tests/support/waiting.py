"""Waiting for something to happen, with a deadline and a failure that names what never came."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(
    check: Callable[[], Any],
    what: str,
    timeout_s: float = 30.0,
    *,
    every_s: float = 0.05,
    detail: Callable[[], str] | None = None,
) -> None:
    """Poll ``check`` until it returns something true; after ``timeout_s`` fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            extra = f"\n{detail()}" if detail else ""
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}{extra}")
        time.sleep(every_s)


def answers(url: str, *, ok_only: bool = False) -> bool:
    """Does something answer at ``url`` (with a 200 when ``ok_only``)?"""
    from rlft.localstack import answers as answering

    return answering(url, ok_only=ok_only, timeout=1.0)


def wait_http(
    url: str, timeout_s: float = 30.0, *, ok_only: bool = True, alive: Callable[[], None] | None = None
) -> None:
    """Wait until ``url`` answers; ``alive`` (called between tries) raises when the server died meanwhile."""

    def up() -> bool:
        if alive is not None:
            alive()
        return answers(url, ok_only=ok_only)

    wait_until(up, f"an answer at {url}", timeout_s, every_s=0.2)
