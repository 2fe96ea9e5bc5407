"""The service's administration entry point: schema migrations and API keys, for an operator's tools.

``rlft migrate`` and ``rlft keys ...`` call these functions and nothing else of the service, so the rules
(which database, how a key is made and stored) stay the service's own. Each function commits to the
database that ``settings`` names. Every expected failure (no database, no schema, an unknown key id, a bad
tenant name) is an :class:`AdminError` whose message says what to do; anything else is a bug.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rlft_contracts.settings import Settings
from service import keys
from service.keys import KeyInfo

T = TypeVar("T")

__all__ = [
    "AdminError",
    "KeyInfo",
    "create_key",
    "list_keys",
    "migrate",
    "redact",
    "revoke_key",
    "rotate_key",
]


class AdminError(Exception):
    """An expected failure of an admin action; the message is one line that says what to do."""


def migrate(settings: Settings) -> None:
    """Create or upgrade the schema of the database that ``settings.database_url`` names."""
    from service.db import migrate as upgrade

    with _database_errors(settings.database_url):
        upgrade(settings)


def create_key(settings: Settings, tenant: str) -> str:
    """A new API key for ``tenant`` (created if new), returned in clear once; the database keeps a hash."""
    return _admin(settings, lambda: keys.create_api_key(settings, tenant))


def list_keys(settings: Settings, tenant: str | None = None) -> list[KeyInfo]:
    """Every key (or one tenant's), oldest first, revoked ones included; never the keys themselves."""
    return _admin(settings, lambda: keys.list_keys(settings, tenant))


def revoke_key(settings: Settings, key_id: str) -> KeyInfo:
    """Revoke a key by id; it answers 401 from the next request on."""
    return _admin(settings, lambda: keys.revoke_key(settings, key_id))


def rotate_key(settings: Settings, key_id: str) -> tuple[str, KeyInfo]:
    """A new key for the same tenant (in clear, once) and the old one revoked, in one transaction."""
    return _admin(settings, lambda: keys.rotate_key(settings, key_id))


def redact(url: str) -> str:
    """A database URL fit for a message: the credentials before ``@`` are hidden."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def _admin(settings: Settings, work: Callable[[], T]) -> T:
    try:
        with _database_errors(settings.database_url):
            return work()
    # An unknown key id; a bad tenant name; a database without its schema.
    except (keys.KeyNotFound, ValueError, RuntimeError) as exc:
        raise AdminError(str(exc)) from exc


@contextmanager
def _database_errors(url: str) -> Iterator[None]:
    """Turn a missing database or schema into one line that says what to do."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    try:
        yield
    except (OperationalError, ProgrammingError) as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        if "no such table" in reason or "does not exist" in reason and "relation" in reason:
            raise AdminError(f"the database at {redact(url)} has no schema yet: run `rlft migrate`") from exc
        raise AdminError(
            f"cannot use the database at {redact(url)}: {reason} (check RLFT_DATABASE_URL)"
        ) from exc
