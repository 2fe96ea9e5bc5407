"""Request dependencies. The tenant ownership check of every job route lives here, and only here."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from rlft_contracts.settings import Settings
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


def get_read_session(request: Request) -> Iterator[Session]:
    # For routes that only read: on SQLite a deferred transaction, so readers never queue for the write lock.
    with request.app.state.read_session_factory() as session:
        yield session


def get_worker_session(request: Request) -> Iterator[Session]:
    # The worker API's own pool (service/app.py): public traffic cannot take the connections it needs.
    with session_scope(request.app.state.worker_session_factory) as session:
        yield session


def get_cipher(request: Request) -> HeaderCipher:
    return request.app.state.cipher


def get_queue(request: Request) -> JobQueue:
    return request.app.state.queue


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
ReadSessionDep = Annotated[Session, Depends(get_read_session, scope="function")]
WorkerSessionDep = Annotated[Session, Depends(get_worker_session, scope="function")]
CipherDep = Annotated[HeaderCipher, Depends(get_cipher)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]


def current_tenant(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_tenant_bearer)],
) -> Tenant:
    if credentials is None:
        raise _unauthorized("send 'Authorization: Bearer <key>' (create a key with `rlft keys create`)")
    # A short session of its own, closed before the route runs: the route's work (a dry run waiting on a
    # slow endpoint, an upload) never holds the connection that authenticated it.
    with request.app.state.read_session_factory() as session:
        tenant = tenant_for_key(session, credentials.credentials)
    if tenant is None:
        raise _unauthorized("the API key is unknown or revoked")
    return tenant


CurrentTenant = Annotated[Tenant, Depends(current_tenant)]
JobId = Annotated[str, Path(pattern=id_pattern("job"), description="The job id (job_ and 24 hex digits).")]


def job_for_tenant(job_id: JobId, tenant: CurrentTenant, session: ReadSessionDep) -> Job:
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
    if not _is_worker_secret(request, credentials):
        raise _unauthorized("the internal API needs 'Authorization: Bearer <RLFT_WORKER_SECRET>'")


def _is_worker_secret(request: Request, credentials: HTTPAuthorizationCredentials | None) -> bool:
    expected: str = request.app.state.worker_secret
    given = credentials.credentials.encode() if credentials is not None else b""
    return credentials is not None and hmac.compare_digest(given, expected.encode())


WorkerAuth = Depends(worker_auth)


def metrics_auth(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_worker_bearer)],
) -> None:
    """``/metrics`` takes the worker secret, unless RLFT_METRICS_PUBLIC is set (a private network)."""
    if request.app.state.settings.metrics_public:
        return
    if not _is_worker_secret(request, credentials):
        raise _unauthorized(
            "/metrics needs 'Authorization: Bearer <RLFT_WORKER_SECRET>' "
            "(or set RLFT_METRICS_PUBLIC=1 where only a private network reaches the API)"
        )


MetricsAuth = Depends(metrics_auth)
