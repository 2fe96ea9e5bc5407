"""Request dependencies. The tenant ownership check of every job route lives here, and only here."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from rlft.settings import Settings
from service import crud
from service.crypto import HeaderCipher
from service.db import session_scope
from service.keys import tenant_for_key
from service.models import Job, Tenant, id_pattern
from service.queue import JobQueue

_tenant_bearer = HTTPBearer(
    auto_error=False, scheme_name="TenantKey", description="A key from `rlft keys create`."
)
_worker_bearer = HTTPBearer(auto_error=False, scheme_name="WorkerSecret", description="RLFT_WORKER_SECRET.")


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        401, detail={"code": "unauthorized", "message": message}, headers={"WWW-Authenticate": "Bearer"}
    )


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    # Commits after the route returns and before the response goes out; then runs after-commit hooks.
    with session_scope(request.app.state.session_factory) as session:
        yield session


def get_cipher(request: Request) -> HeaderCipher:
    return request.app.state.cipher


def get_queue(request: Request) -> JobQueue:
    return request.app.state.queue


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
CipherDep = Annotated[HeaderCipher, Depends(get_cipher)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]


def current_tenant(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_tenant_bearer)],
) -> Tenant:
    if credentials is None:
        raise _unauthorized("send 'Authorization: Bearer <key>' (create a key with `rlft keys create`)")
    tenant = tenant_for_key(session, credentials.credentials)
    if tenant is None:
        raise _unauthorized("the API key is unknown or revoked")
    return tenant


CurrentTenant = Annotated[Tenant, Depends(current_tenant)]
JobId = Annotated[str, Path(pattern=id_pattern("job"), description="The job id (job_ and 24 hex digits).")]


def job_for_tenant(job_id: JobId, tenant: CurrentTenant, session: SessionDep) -> Job:
    return crud.get_job(session, tenant.id, job_id)


def locked_job_for_tenant(job_id: JobId, tenant: CurrentTenant, session: SessionDep) -> Job:
    """The same check, with the row locked: for state changes racing a worker or the reaper."""
    return crud.get_job(session, tenant.id, job_id, lock=True)


JobForTenant = Annotated[Job, Depends(job_for_tenant)]
LockedJobForTenant = Annotated[Job, Depends(locked_job_for_tenant)]


def worker_auth(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_worker_bearer)],
) -> None:
    expected: str = request.app.state.worker_secret
    if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise _unauthorized("the internal API needs 'Authorization: Bearer <RLFT_WORKER_SECRET>'")


WorkerAuth = Depends(worker_auth)
