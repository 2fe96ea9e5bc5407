"""Settings shared by the API, the worker, the CLI and ``migrations/env.py``.

One pydantic-settings class read from ``RLFT_*`` environment variables through the cached
:func:`get_settings`. Nothing is read at import time.

Secrets (``RLFT_WORKER_SECRET``, ``RLFT_ENCRYPTION_KEY``): outside dev mode a placeholder value is refused
when the settings are built, and a missing one makes :meth:`Settings.resolved_worker_secret` /
:meth:`Settings.resolved_encryption_key` raise with the variable to set (the API calls both at startup, the
worker the first). In dev mode (``RLFT_DEV_MODE=1``: the demo, the tests, ``rlft up``) a missing secret is
generated once and kept under ``data_dir/secrets/`` so that an API and a worker sharing the data directory
agree on it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import secrets
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Values people paste from examples; running a real service with one of them is a security hole.
_PLACEHOLDERS = {
    "",
    "changeme",
    "change-me",
    "change_me",
    "secret",
    "dev",
    "devsecret",
    "dev-secret",
    "placeholder",
    "password",
    "xxx",
    "todo",
    "insecure",
}

_DB_SCHEMES = ("sqlite", "postgresql", "postgres")


class SettingsError(ValueError):
    """A setting is missing or wrong; the message names the environment variable to fix."""


def _is_fernet_key(value: str) -> bool:
    try:
        return len(base64.urlsafe_b64decode(value.encode())) == 32
    except (binascii.Error, ValueError):
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RLFT_", extra="ignore", validate_default=True, hide_input_in_errors=True
    )

    data_dir: Path = Field(Path(".rlft"), description="Local state: SQLite files, dev secrets, artifacts.")
    database_url: str = Field(
        "", description="SQLAlchemy URL; default sqlite:///{data_dir}/rlft.db. Postgres in production."
    )
    broker_url: str = Field(
        "", description="Celery broker; default an embedded SQLite broker at {data_dir}/broker.db."
    )
    artifact_store: str = Field(
        "", description="Where checkpoints go: a local path or any fsspec URL; default {data_dir}/artifacts."
    )
    api_url: str = Field("http://127.0.0.1:8000", description="How workers and the CLI reach the API.")
    api_key: SecretStr | None = Field(None, description="The tenant key the CLI and client send.")
    worker_secret: SecretStr | None = Field(None, description="Bearer secret of the /internal/v1 API.")
    encryption_key: SecretStr | None = Field(
        None, description="Fernet key encrypting reward headers at rest (Fernet.generate_key())."
    )
    dev_mode: bool = Field(False, description="Generate missing secrets; never use in production.")
    allow_private_reward_urls: bool = Field(
        False, description="Let reward URLs resolve to loopback/private ranges (demo, tests)."
    )
    reward_url_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Hosts reward URLs may use (comma-separated); empty: no allow-list."
    )
    max_upload_bytes: int = Field(100 * 1024 * 1024, ge=1, description="Largest accepted file upload.")
    max_dataset_rows: int = Field(1_000_000, ge=1, description="Most rows a dataset may have.")
    max_attempts: int = Field(3, ge=1, description="Claims of a job before it fails (lost workers).")
    lease_seconds: int = Field(60, ge=1, description="A claim's lease; heartbeats extend it.")
    reaper_interval_s: float = Field(5.0, gt=0, description="How often the reaper/reconciler runs.")
    reconcile_after_s: float = Field(
        120.0, gt=0, description="A queued job unclaimed for this long is enqueued again."
    )
    default_queue: str = Field("gpu", min_length=1, description="Queue of jobs that name none.")
    job_time_limit_s: int = Field(7 * 24 * 3600, ge=1, description="Hard time limit of one job.")
    broker_visibility_timeout_s: int = Field(
        8 * 24 * 3600, ge=1, description="Redelivery delay of unacked messages: longer than the longest job."
    )
    run_background_tasks: bool = Field(True, description="Run the reaper/reconciler inside the API.")
    # models and devices (issue 9): what a job may load, and how many ranks it may ask for
    model_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Directories (comma-separated) whose model directories jobs may name by absolute path; "
        "never the artifact store or the data dir. Empty: only hub ids and the tenant's checkpoints.",
    )
    max_gpus_per_job: int = Field(8, ge=1, le=64, description="Largest resources.gpus a job may ask for.")
    worker_cpu_ranks: int = Field(
        0,
        ge=0,
        le=64,
        description="CPU ranks a worker without GPUs offers to a job asking for >1 (tests, CPU-only fleets).",
    )
    # input validation (issue 9)
    max_inline_spec_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="Largest job-create or dry-run body; bigger datasets go through POST /v1/files (413).",
    )
    # load: admission, database pools, per-tenant limits, /metrics access (per API process)
    max_requests_in_flight: int = Field(
        24, ge=1, description="Public requests one API process serves at once; more wait, then answer 503."
    )
    max_worker_requests_in_flight: int = Field(
        8, ge=1, description="Worker API requests served at once, with their own DB pool: never starved."
    )
    admission_wait_s: float = Field(
        2.0, ge=0, description="How long a request waits for a free slot before answering 503 + Retry-After."
    )
    db_wait_s: float = Field(
        5.0, gt=0, description="Wait for a pooled DB connection or the SQLite write lock, then answer 503."
    )
    max_dry_runs_per_tenant: int = Field(
        4, ge=1, description="Reward dry runs (/v1/rewards/validate) one tenant has in flight; more: 429."
    )
    max_dry_runs_in_flight: int = Field(
        64, ge=1, description="Reward dry runs in flight over all tenants; more answer 503 + Retry-After."
    )
    max_active_jobs_per_tenant: int = Field(
        100, ge=1, description="Queued, running, pausing or cancelling jobs a tenant may have; more: 429."
    )
    metrics_public: bool = Field(
        False, description="Serve /metrics without the worker secret (only on a private network)."
    )

    @field_validator("reward_url_allowlist", mode="before")
    @classmethod
    def _split_allowlist(cls, v: object) -> object:
        if isinstance(v, str):
            return [h.strip() for h in v.split(",") if h.strip()]
        return v

    @field_validator("model_roots", mode="before")
    @classmethod
    def _split_roots(cls, v: object) -> object:
        if isinstance(v, str):
            return [r.strip() for r in v.split(",") if r.strip()]
        return v

    @field_validator("api_url")
    @classmethod
    def _api_url_shape(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"RLFT_API_URL must start with http:// or https:// (got {v!r})")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _resolve(self) -> Settings:
        # Relative paths resolve against the current directory, once, so later chdirs change nothing.
        self.data_dir = self.data_dir.expanduser().resolve()
        self.database_url = _database_url(self.database_url, self.data_dir)
        self.broker_url = self.broker_url or f"sqla+sqlite:///{self.data_dir / 'broker.db'}"
        if "://" not in self.broker_url:
            raise ValueError(f"RLFT_BROKER_URL must be a URL (redis://host:6379/0), not {self.broker_url!r}")
        store = self.artifact_store or str(self.data_dir / "artifacts")
        self.artifact_store = store if "://" in store else str(Path(store).expanduser().resolve())
        self.model_roots = [str(Path(r).expanduser().resolve()) for r in self.model_roots]
        self._refuse_roots_in_state()
        if not self.dev_mode:
            self._refuse_placeholders()
        return self

    def _refuse_roots_in_state(self) -> None:
        from rlcore.modelpolicy import forbidden_dirs

        state = forbidden_dirs(self.artifact_store, self.data_dir)
        for root in map(Path, self.model_roots):
            if any(root == d or d in root.parents for d in state):
                raise ValueError(
                    f"RLFT_MODEL_ROOTS: {root} is inside the data directory or the artifact store, "
                    "which jobs may never read; keep exposed models in a directory of their own"
                )

    def _refuse_placeholders(self) -> None:
        given = (("RLFT_WORKER_SECRET", self.worker_secret), ("RLFT_ENCRYPTION_KEY", self.encryption_key))
        for env, value in given:
            if value is not None and value.get_secret_value().strip().lower() in _PLACEHOLDERS:
                raise ValueError(
                    f"{env} is a placeholder; set it to a real secret "
                    "(or set RLFT_DEV_MODE=1 for a local, generated one)"
                )
        if self.encryption_key is not None and not _is_fernet_key(self.encryption_key.get_secret_value()):
            raise ValueError(
                "RLFT_ENCRYPTION_KEY is not a Fernet key; generate one with "
                "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
            )

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def resolved_worker_secret(self) -> str:
        """The worker secret; generated and stored under data_dir in dev mode, else required."""
        return self._secret("worker_secret", "RLFT_WORKER_SECRET", lambda: secrets.token_urlsafe(32))

    def resolved_encryption_key(self) -> str:
        """The Fernet key for secrets at rest; generated under data_dir in dev mode, else required."""
        key = self._secret(
            "encryption_key", "RLFT_ENCRYPTION_KEY", lambda: base64.urlsafe_b64encode(os.urandom(32)).decode()
        )
        if not _is_fernet_key(key):
            raise SettingsError("RLFT_ENCRYPTION_KEY is not a Fernet key (32 url-safe base64-encoded bytes)")
        return key

    def _secret(self, field: str, env: str, generate) -> str:
        value: SecretStr | None = getattr(self, field)
        if value is not None and value.get_secret_value():
            return value.get_secret_value()
        if not self.dev_mode:
            raise SettingsError(f"{env} is not set: set it (the same value on the API and the workers)")
        path = self.data_dir / "secrets" / field
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # Written exclusively so that an API and a worker starting together keep one value.
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(generate())
            except FileExistsError:
                pass
        return path.read_text().strip()


def _database_url(url: str, data_dir: Path) -> str:
    if not url:
        return f"sqlite:///{data_dir / 'rlft.db'}"
    scheme = url.split("://", 1)[0] if "://" in url else ""
    base = scheme.split("+", 1)[0]
    if base not in _DB_SCHEMES:
        raise ValueError(
            "RLFT_DATABASE_URL must be a sqlite:///path or postgresql://user@host/db URL "
            f"(got scheme {scheme or 'none'!r})"
        )
    # psycopg (v3) is the driver we ship; plain postgres:// URLs would ask SQLAlchemy for psycopg2.
    if base in ("postgres", "postgresql") and "+" not in scheme:
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, built once from the environment (tests call ``get_settings.cache_clear()``)."""
    return Settings()
