"""Tenants and their API keys. Keys are shown once, stored as a sha256."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from rlft.settings import Settings
from service.models import ApiKey, Tenant, new_id

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
    if isinstance(session_or_settings, Session):
        return _create(session_or_settings, tenant_name)
    from service.db import make_engine, make_session_factory, session_scope

    engine = make_engine(session_or_settings.database_url)
    try:
        if not inspect(engine).has_table("api_keys"):
            raise RuntimeError("the database has no tables yet: run `rlft migrate` first")
        with session_scope(make_session_factory(engine)) as session:
            return _create(session, tenant_name)
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
