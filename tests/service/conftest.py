"""Fixtures: one app per database (a SQLite temp file always; Postgres when RLFT_TEST_DATABASE_URL is set).

Each Postgres test gets a fresh schema (search_path in the URL), so tests never see each other's rows
and never touch other people's tables in the shared test database.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient

from rlft_contracts.settings import Settings
from service.app import create_app
from service.db import migrate
from service.keys import create_api_key
from tests.support.databases import throwaway_schema

PG_URL = os.environ.get("RLFT_TEST_DATABASE_URL")
WORKER_SECRET = "test-worker-" + secrets.token_hex(8)
BACKENDS = ["sqlite"] + (["postgres"] if PG_URL else [])


@pytest.fixture
def pg_schema_url() -> Iterator[str]:
    if not PG_URL:
        pytest.skip("RLFT_TEST_DATABASE_URL is not set")
    with throwaway_schema(PG_URL) as url:
        yield url


def make_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "database_url": database_url,
        "dev_mode": True,
        "worker_secret": WORKER_SECRET,
        "encryption_key": Fernet.generate_key().decode(),
        "allow_private_reward_urls": True,
        "run_background_tasks": False,
        **overrides,
    }
    return Settings(**values)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'rlft.db'}"
    else:
        with throwaway_schema(PG_URL or "") as url:
            yield url


def migrated_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Settings:
    """:func:`make_settings` on a database brought to the newest schema."""
    s = make_settings(tmp_path, database_url, **overrides)
    migrate(s)
    return s


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return migrated_settings(tmp_path, database_url)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def strict_client(tmp_path: Path, database_url: str) -> Iterator[tuple[TestClient, dict]]:
    """An app that refuses reward URLs on private addresses (the production default), and alice's key."""
    s = migrated_settings(tmp_path, database_url, allow_private_reward_urls=False)
    with TestClient(create_app(s)) as c:
        yield c, {"Authorization": f"Bearer {create_api_key(s, 'alice')}"}


@pytest.fixture
def alice(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_api_key(settings, 'alice')}"}


@pytest.fixture
def bob(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_api_key(settings, 'bob')}"}


WORKER = {"Authorization": f"Bearer {WORKER_SECRET}"}


def job_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "algorithm": "grpo",
        "model": {"name_or_path": "tiny-qwen"},
        "dataset": {"rows": [{"prompt": "2+2=", "label": "4"}, {"prompt": "3+3=", "label": "6"}]},
        "reward": {"url": "http://127.0.0.1:9/score"},
        "hyperparameters": {"steps": 5, "prompts_per_step": 2, "group_size": 2},
        "resources": {"gpus": 0},
        "metadata": {"team": "search"},
    }
    body.update(overrides)
    return body


def create_job(client: TestClient, headers: dict[str, str], **overrides: Any) -> dict[str, Any]:
    r = client.post("/v1/jobs", json=job_body(**overrides), headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


def claim(client: TestClient, job_id: str, worker_id: str = "w1") -> dict[str, Any]:
    r = client.post(f"/internal/v1/jobs/{job_id}/claim", json={"worker_id": worker_id}, headers=WORKER)
    assert r.status_code == 200, r.text
    return r.json()


def wpost(client: TestClient, job_id: str, what: str, **body: Any) -> Any:
    """A worker call: POST /internal/v1/jobs/{job_id}/{what} with the worker secret."""
    return client.post(f"/internal/v1/jobs/{job_id}/{what}", json=body, headers=WORKER)
