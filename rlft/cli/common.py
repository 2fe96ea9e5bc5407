"""What every ``rlft`` command shares: the consoles, the one expected error, settings, the API key and client.

Configuration comes from flags, then the environment (``RLFT_API_URL``, ``RLFT_API_KEY``), then the dev
key that ``rlft up`` writes under the data directory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from rlft import client as api

# soft_wrap: an error stays one line (and an id one token) whatever the terminal's width.
# Piped output is not cut to 80 columns: scripts and logs want whole lines.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)
DEV_KEY_FILE = "dev-api-key"


class CLIError(Exception):
    """An expected failure: printed as one line, exit code 1."""


def settings():
    """The shared settings; a bad value is a one-line error, not a traceback."""
    from pydantic import ValidationError as PydanticValidationError

    from rlft_contracts.settings import get_settings

    try:
        return get_settings()
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        raise CLIError(f"bad setting: {first['msg']}") from exc


def api_key(args: argparse.Namespace) -> str | None:
    if getattr(args, "api_key", None):
        return args.api_key
    current = settings()
    if current.api_key is not None and current.api_key.get_secret_value():
        return current.api_key.get_secret_value()
    dev_key = current.data_dir / DEV_KEY_FILE
    return dev_key.read_text().strip() if dev_key.exists() else None


def client(args: argparse.Namespace) -> api.Client:
    url = getattr(args, "api_url", None) or settings().api_url
    key = api_key(args)
    if not key:
        raise CLIError(
            "no API key: set RLFT_API_KEY (or pass --api-key); create one with "
            "`rlft keys create --tenant NAME`"
        )
    return api.Client(url, key)


def explain(exc: api.APIError, url: str) -> str:
    """An API error as one line that says what to do."""
    if isinstance(exc, api.APIConnectionError):
        return f"cannot reach the API at {url} — start it with `rlft up` or set RLFT_API_URL"
    if isinstance(exc, api.AuthenticationError):
        return (
            f"the API at {url} refused the key (HTTP {exc.status_code}: {exc.message}) — check "
            "RLFT_API_KEY or create a key with `rlft keys create --tenant NAME`"
        )
    code = f" [{exc.code}]" if exc.code else ""
    return f"the API answered HTTP {exc.status_code}{code}: {exc.message}"


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise CLIError(f"{path} is not JSON Lines (one JSON object a line): {exc}") from exc


def pydantic_message(exc: Any) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"])
        parts.append(f"{loc}: {e['msg']}" if loc else e["msg"])
    return "; ".join(parts)
