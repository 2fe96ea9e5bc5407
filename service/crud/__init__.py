"""Database functions: every read and write of the API and of the reaper goes through here.

Nothing here commits: the session dependency (deps.py) or ``db.session_scope`` commits on success and then
runs the after-commit callbacks (enqueueing a job id). Row locks (``FOR UPDATE`` on Postgres; SQLite
transactions start ``IMMEDIATE``) serialise state changes of one job between the API, workers and reaper.

By concern: ``jobs`` (create, read, list, status changes), ``metrics`` (events, metrics, samples),
``checkpoints``, ``leases`` (claim, fence, heartbeat, finish, the reaper). Callers use ``crud.NAME``.
"""

from service.crud.checkpoints import (
    checkpoint_for_tenant,
    drop_expired_download_leases,
    end_download_lease,
    get_checkpoint,
    list_checkpoints,
    mark_purged,
    newest_checkpoint,
    purgeable_checkpoints,
    register_checkpoint,
    renew_download_lease,
    take_download_lease,
)
from service.crud.jobs import (
    ACTIVE,
    apply,
    cancel,
    count_active_jobs,
    count_by_status,
    file_for_tenant,
    find_idempotent,
    get_file,
    get_job,
    insert_job,
    job_public,
    list_jobs,
    pause,
    resume,
    schedule_enqueue,
    set_status,
)
from service.crud.leases import (
    claim,
    fail_unservable,
    fenced_job,
    finish,
    heartbeat,
    reap_expired,
    reconcile_queued,
)
from service.crud.metrics import (
    add_event,
    ingest_events,
    ingest_metrics,
    ingest_samples,
    list_events,
    list_metrics,
    list_samples,
)

__all__ = [
    "take_download_lease",
    "renew_download_lease",
    "purgeable_checkpoints",
    "mark_purged",
    "end_download_lease",
    "drop_expired_download_leases",
    "ACTIVE",
    "add_event",
    "apply",
    "cancel",
    "checkpoint_for_tenant",
    "claim",
    "count_active_jobs",
    "count_by_status",
    "fail_unservable",
    "fenced_job",
    "file_for_tenant",
    "find_idempotent",
    "finish",
    "get_checkpoint",
    "get_file",
    "get_job",
    "heartbeat",
    "ingest_events",
    "ingest_metrics",
    "ingest_samples",
    "insert_job",
    "job_public",
    "list_checkpoints",
    "list_events",
    "list_jobs",
    "list_metrics",
    "list_samples",
    "newest_checkpoint",
    "pause",
    "reap_expired",
    "reconcile_queued",
    "register_checkpoint",
    "resume",
    "schedule_enqueue",
    "set_status",
]
