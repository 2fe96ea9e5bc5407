"""Real API and reward-server processes for tests, started and stopped by :class:`rlft.localstack.LocalStack`
(the same class as ``rlft up`` and ``make demo``); the schema and the keys come from the service's admin
entry point (:mod:`service.admin`)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rlft.localstack import LETTER_APP, LocalStack, stack_env
from rlft_contracts.localproc import free_port
from rlft_contracts.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Api:
    url: str
    key: str
    other_key: str  # a second tenant's
    worker_secret: str
    reward_url: str
    data_dir: Path
    backends: dict[str, str]  # RLFT_DATABASE_URL / RLFT_BROKER_URL when not the embedded defaults


@contextmanager
def api_stack(data: Path, backends: dict[str, str] | None = None) -> Iterator[Api]:
    """An API process and the letter reward server on ``backends`` (default: the embedded SQLite database
    and broker under ``data``), migrated, with keys for two tenants (tenant-a, tenant-b)."""
    from service import admin

    backends = backends or {}
    port = free_port()
    worker_secret = secrets.token_urlsafe(32)
    env = stack_env(data, f"http://127.0.0.1:{port}", RLFT_WORKER_SECRET=worker_secret, **backends)
    settings = Settings(data_dir=data, dev_mode=True, **{k[5:].lower(): v for k, v in backends.items()})
    admin.migrate(settings)
    keys = admin.create_key(settings, "tenant-a"), admin.create_key(settings, "tenant-b")
    with LocalStack(env=env, log_dir=data / "logs", cwd=ROOT) as stack:
        url = stack.start_api("127.0.0.1", port)
        reward = stack.start_reward_server(LETTER_APP, "127.0.0.1", free_port())
        yield Api(url, keys[0], keys[1], worker_secret, reward, data, backends)


@contextmanager
def api_process(settings: Settings, **extra_env: str) -> Iterator[str]:
    """A separate API process (uvicorn) on the settings' database and secrets; yields its URL."""
    env = {
        **os.environ,
        "RLFT_DATA_DIR": str(settings.data_dir),
        "RLFT_DATABASE_URL": settings.database_url,
        "RLFT_WORKER_SECRET": settings.resolved_worker_secret(),
        "RLFT_ENCRYPTION_KEY": settings.resolved_encryption_key(),
        "RLFT_DEV_MODE": "1",
        "RLFT_RUN_BACKGROUND_TASKS": "0",
        "RLFT_ALLOW_PRIVATE_REWARD_URLS": "1",
        **extra_env,
    }
    log_dir = settings.data_dir / "logs" / secrets.token_hex(4)  # one folder a process: two may run at once
    with LocalStack(env=env, log_dir=log_dir, cwd=ROOT) as stack:
        yield stack.start_api("127.0.0.1", free_port())
