"""Creating a job: the checks beyond ``JobSpec``, the active-job limit, and ``Idempotency-Key`` retries."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rlcore.spec import JobSpec
from rlft_contracts.settings import Settings
from service import crud
from service.crypto import HeaderCipher
from service.errors import Conflict, TooManyRequests
from service.models import Job, Tenant
from service.validation import check_dataset, check_model, check_resources, check_reward_url

# Jobs run for minutes: a tenant at its active-job limit has nothing to gain from retrying sooner.
ACTIVE_JOBS_RETRY_AFTER_S = 60


def create_job(
    session: Session,
    tenant: Tenant,
    spec: JobSpec,
    *,
    settings: Settings,
    cipher: HeaderCipher,
    enqueue: Callable[[str, str], Any],
    idempotency_key: str | None,
) -> tuple[Job, bool]:
    """The new job (enqueued after the commit) and True; or, for a retry with the same
    ``Idempotency-Key`` and spec, the job it created first and False."""
    request_hash = _request_hash(spec, cipher)
    if idempotency_key and (existing := _idempotent(session, tenant.id, idempotency_key, request_hash)):
        return existing, False
    for field, reward in spec.http_rewards():
        check_reward_url(reward.url, settings, field=f"{field}.url")
    check_dataset(session, tenant, spec, settings)
    check_model(session, tenant, spec, settings)
    check_resources(spec, settings)
    _check_active_jobs(session, tenant.id, settings.max_active_jobs_per_tenant)
    try:
        with session.begin_nested():
            job = crud.insert_job(
                session,
                tenant_id=tenant.id,
                spec_public=spec.public_dict(),
                secret_headers=cipher.encrypt(spec.header_secrets()),
                queue=spec.queue(settings.default_queue),
                total_steps=spec.hyperparameters.steps,
                idempotency_key=idempotency_key,
                request_hash=request_hash,
            )
    except IntegrityError:
        # A concurrent retry with the same Idempotency-Key won the insert: answer with its job.
        existing = _idempotent(session, tenant.id, idempotency_key or "", request_hash)
        if existing is None:
            raise
        return existing, False
    crud.schedule_enqueue(session, job, enqueue)
    return job, True


def _request_hash(spec: JobSpec, cipher: HeaderCipher) -> str:
    """What makes two creates "the same request" for an Idempotency-Key: the public spec and, keyed so that
    the stored hash tells nothing about them, the reward header values (the public spec masks them)."""
    canonical = json.dumps(spec.public_dict(), sort_keys=True)
    if headers := spec.header_secrets():
        # Only with headers: a job without any keeps the hash it had before values counted.
        canonical += "\n" + cipher.fingerprint(headers)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _check_active_jobs(session: Session, tenant_id: str, limit: int) -> None:
    active = crud.count_active_jobs(session, tenant_id)
    if active >= limit:
        raise TooManyRequests(
            f"you have {active} active (queued or running) jobs, the most one tenant may have "
            "(RLFT_MAX_ACTIVE_JOBS_PER_TENANT); wait for some to finish or cancel some, then retry",
            code="too_many_active_jobs",
            retry_after_s=ACTIVE_JOBS_RETRY_AFTER_S,
        )


def _idempotent(session: Session, tenant_id: str, key: str, request_hash: str) -> Job | None:
    job = crud.find_idempotent(session, tenant_id, key)
    if job is not None and job.request_hash != request_hash:
        raise Conflict(
            "this Idempotency-Key was used for a different job spec; use a new key for a new job",
            code="idempotency_key_reused",
        )
    return job
