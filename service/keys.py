"""Tenants and their API keys. Keys are shown once, stored as a sha256; listed, revoked and rotated by id.

The admin functions take either a ``Session`` (the caller's transaction decides: tests, admin code) or
``Settings`` (committed to that database: what ``rlft keys ...`` does).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from rlft_contracts.settings import Settings
from service.models import ApiKey, Tenant, new_id, utcnow

T = TypeVar("T")

KEY_PREFIX = "rlft_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(session_or_settings: Session | Settings, tenant_name: str) -> str:
    """Create a key for ``tenant_name`` (creating the tenant if new) and return it in clear.

    With ``Settings`` the key is committed to that database (what ``rlft keys create`` does). With a
    ``Session`` it is added and flushed, and the caller's transaction decides (tests, admin code).
    """
    tenant_name = tenant_name.strip()
    if not tenant_name or len(tenant_name) > 200:
        raise ValueError("a tenant name is 1 to 200 characters")
    return _in_session(session_or_settings, lambda session: _create(session, tenant_name))


def _in_session(session_or_settings: Session | Settings, work: Callable[[Session], T]) -> T:
    if isinstance(session_or_settings, Session):
        return work(session_or_settings)
    with _admin_session(session_or_settings) as session:
        return work(session)


@contextmanager
def _admin_session(settings: Settings) -> Iterator[Session]:
    from service.db import make_engine, make_session_factory, session_scope

    engine = make_engine(settings.database_url)
    try:
        if not inspect(engine).has_table("api_keys"):
            raise RuntimeError("the database has no tables yet: run `rlft migrate` first")
        with session_scope(make_session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()


def _create(session: Session, tenant_name: str) -> str:
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        tenant = Tenant(id=new_id("ten"), name=tenant_name)
        session.add(tenant)
        session.flush()
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(id=new_id("key"), tenant_id=tenant.id, key_hash=hash_key(key), prefix=key[:12]))
    session.flush()
    return key


def tenant_for_key(session: Session, key: str) -> Tenant | None:
    return session.scalar(
        select(Tenant)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    )


@dataclass(frozen=True)
class KeyInfo:
    """What may be shown of a key: never the key or its hash."""

    id: str
    tenant: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


class KeyNotFound(LookupError):
    pass


def list_keys(session_or_settings: Session | Settings, tenant_name: str | None = None) -> list[KeyInfo]:
    """Every key (or one tenant's), oldest first, revoked ones included."""

    def work(session: Session) -> list[KeyInfo]:
        stmt = select(ApiKey, Tenant.name).join(Tenant, Tenant.id == ApiKey.tenant_id)
        if tenant_name is not None:
            stmt = stmt.where(Tenant.name == tenant_name.strip())
        rows = session.execute(stmt.order_by(ApiKey.created_at, ApiKey.id)).all()
        return [KeyInfo(k.id, name, k.prefix, k.created_at, k.revoked_at) for k, name in rows]

    return _in_session(session_or_settings, work)


def revoke_key(session_or_settings: Session | Settings, key_id: str) -> KeyInfo:
    """Revoke the key with this id (``key_…``); from the next request on it answers 401. Idempotent."""
    return _in_session(session_or_settings, lambda session: _revoke(session, key_id))


def rotate_key(session_or_settings: Session | Settings, key_id: str) -> tuple[str, KeyInfo]:
    """A new key for the tenant of ``key_id`` (returned in clear, once) and that old key revoked, together."""

    def work(session: Session) -> tuple[str, KeyInfo]:
        old = _revoke(session, key_id)
        return _create(session, old.tenant), old

    return _in_session(session_or_settings, work)


def _revoke(session: Session, key_id: str) -> KeyInfo:
    row = session.execute(
        select(ApiKey, Tenant.name)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.id == key_id.strip())
        .with_for_update()
    ).first()
    if row is None:
        raise KeyNotFound(f"no API key with id {key_id!r}: `rlft keys list` shows the ids")
    key, tenant = row
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return KeyInfo(key.id, tenant, key.prefix, key.created_at, key.revoked_at)
