"""Backing services of one's own on the shared test Postgres and Redis: created here, removed afterwards,
so that concurrent test sessions on one machine never see each other's rows or queued jobs."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import pytest


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@contextmanager
def throwaway_database(url: str, prefix: str) -> Iterator[str]:
    """A new database on the server of ``url`` (named ``prefix`` + a random suffix); dropped afterwards."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(url)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(_libpq(url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def throwaway_schema(url: str) -> Iterator[str]:
    """A new schema in the database of ``url``; the URL yielded puts it first on the search path."""
    import sqlalchemy as sa

    from rlft_contracts.settings import Settings

    schema = "t_" + secrets.token_hex(6)
    base = Settings(database_url=url, dev_mode=True).database_url
    admin = sa.create_engine(base, poolclass=sa.NullPool)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@contextmanager
def redis_database(url: str, numbers: tuple[int, ...], lock: str) -> Iterator[str]:
    """A Redis database number of one's own among ``numbers``, emptied before and after.

    Queue names are fixed (gpu, cpu), so two sessions on one Redis database would take each other's jobs:
    a session holds ``lock`` in the number it uses; when every number is held, the test is skipped.
    """
    import redis

    token = uuid.uuid4().hex
    for db in numbers:
        own = urlunsplit(urlsplit(url)._replace(path=f"/{db}"))
        client = redis.Redis.from_url(own)
        if client.set(lock, token, nx=True, ex=3600):
            break
        client.close()
    else:
        pytest.skip(f"every Redis database in {list(numbers)} is held by another test session")
    for key in client.scan_iter():
        if key != lock.encode():
            client.delete(key)
    try:
        yield own
    finally:
        client.flushdb()
        client.close()
