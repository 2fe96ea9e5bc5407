"""Migrations (upgrade → alembic check → downgrade → upgrade, both dialects) and the shared settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from pydantic import ValidationError

from rlft_contracts.settings import Settings, SettingsError
from service.db import alembic_config
from tests.service.conftest import WORKER

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings read RLFT_* from the environment; a developer's own values must not change these tests.
    import os

    for name in list(os.environ):
        if name.startswith("RLFT_") and not name.startswith("RLFT_TEST_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_upgrade_check_downgrade_upgrade(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'm.db'}" if backend == "sqlite" else request.getfixturevalue("pg_schema_url")
    )
    cfg = alembic_config(url)
    command.upgrade(cfg, "head")
    command.check(cfg)  # the models and the migrations agree
    command.downgrade(cfg, "base")
    command.upgrade(cfg, "head")


def test_one_linear_head() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1


def test_defaults_live_under_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = Settings(data_dir="state")
    assert s.data_dir == tmp_path / "state"
    assert s.database_url == f"sqlite:///{tmp_path / 'state' / 'rlft.db'}"
    assert s.broker_url == f"sqla+sqlite:///{tmp_path / 'state' / 'broker.db'}"
    assert s.artifact_store == str(tmp_path / "state" / "artifacts")
    assert Settings(artifact_store="s3://bucket/rlft").artifact_store == "s3://bucket/rlft"
    assert Settings(database_url="postgres://u@h/db").database_url == "postgresql+psycopg://u@h/db"


def test_env_and_bad_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLFT_REWARD_URL_ALLOWLIST", "rewards.example.com, *.corp.example")
    monkeypatch.setenv("RLFT_MAX_ATTEMPTS", "5")
    s = Settings()
    assert s.reward_url_allowlist == ["rewards.example.com", "*.corp.example"] and s.max_attempts == 5
    for field, value, words in (
        ("database_url", "mysql://x/y", "RLFT_DATABASE_URL"),
        ("api_url", "localhost:8000", "RLFT_API_URL"),
        ("broker_url", "not a url", "RLFT_BROKER_URL"),
    ):
        with pytest.raises(ValidationError, match=words):
            Settings(**{field: value})


def test_secrets_outside_dev_mode(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="RLFT_WORKER_SECRET is a placeholder"):
        Settings(data_dir=tmp_path, worker_secret="changeme")
    with pytest.raises(ValidationError, match="RLFT_ENCRYPTION_KEY is not a Fernet key"):
        Settings(data_dir=tmp_path, encryption_key="not-a-key")
    with pytest.raises(SettingsError, match="RLFT_WORKER_SECRET is not set"):
        Settings(data_dir=tmp_path).resolved_worker_secret()


def test_dev_mode_generates_secrets_once(tmp_path: Path) -> None:
    a = Settings(data_dir=tmp_path, dev_mode=True)
    b = Settings(data_dir=tmp_path, dev_mode=True)
    assert a.resolved_worker_secret() == b.resolved_worker_secret()
    assert a.resolved_encryption_key() == b.resolved_encryption_key()
    assert (
        Settings(data_dir=tmp_path, dev_mode=True, worker_secret="changeme").resolved_worker_secret()
        == "changeme"
    )


def test_app_refuses_to_start_without_secrets(tmp_path: Path) -> None:
    from service.app import create_app

    with pytest.raises(SettingsError, match="RLFT_WORKER_SECRET"):
        create_app(Settings(data_dir=tmp_path))


def test_health_ready_and_prometheus(client: TestClient, alice: dict) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": True, "broker": True}
    client.get("/v1/jobs", headers=alice)
    text = client.get("/metrics", headers=WORKER).text
    assert 'rlft_jobs{state="queued"} 0.0' in text
    assert 'route="/v1/jobs"' in text and "rlft_http_request_duration_seconds_bucket" in text


def test_readyz_reports_an_unreachable_broker(settings: Settings) -> None:
    from service.app import create_app

    down = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(down)) as client:
        r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"] == {"database": True, "broker": False}


def test_keys_on_an_unmigrated_database_say_what_to_do(tmp_path: Path) -> None:
    from service.keys import create_api_key

    with pytest.raises(RuntimeError, match="rlft migrate"):
        create_api_key(Settings(data_dir=tmp_path, dev_mode=True), "alice")
