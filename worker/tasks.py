"""The one task: ``rlft.training.run_job(job_id)``. Thin: the supervisor does the work, the service decides.

The message carries only the job id (JSON); the spec and everything else come from the claim. A service
that is down when the job arrives sends the message back to the queue for later instead of losing it.
"""

from __future__ import annotations

import logging

from celery import signals

from rlft_contracts.settings import get_settings
from worker.celery_app import TASK_NAME, app
from worker.relay import ServiceUnavailable
from worker.supervisor import SHUTDOWN, Supervisor

log = logging.getLogger(__name__)


@app.task(name=TASK_NAME, bind=True, max_retries=20, ignore_result=True)
def run_job(self, job_id: str) -> str:
    try:
        outcome = Supervisor(job_id, get_settings()).run()
    except ServiceUnavailable as exc:
        log.warning("job %s: service unreachable at claim (%s); retrying later", job_id, exc)
        raise self.retry(exc=exc, countdown=30) from exc
    log.info("job %s: %s", job_id, outcome)
    return outcome


@signals.worker_shutting_down.connect
def _checkpoint_on_shutdown(**_: object) -> None:
    # Celery's warm shutdown waits for the running task; this makes that wait a checkpoint, not the whole job.
    SHUTDOWN.set()
