"""Enqueue job ids through Celery without importing the worker: a producer-only app built from settings.

The message carries the job id only — never the spec, never a header (the worker claims the rest over
HTTP). It is sent after the commit; a lost message is re-sent by the reconciler (service/reaper.py), and
the claim's compare-and-set makes a duplicate harmless.
"""

from __future__ import annotations

import logging
from pathlib import Path

from celery import Celery

from rlft_contracts.broker import TASK_NAME, transport_options
from rlft_contracts.settings import Settings

log = logging.getLogger(__name__)


def make_producer(settings: Settings) -> Celery:
    if settings.broker_url.startswith("sqla+sqlite:///"):
        # The embedded broker's file lives under data_dir, which may not exist yet.
        Path(settings.broker_url.split(":///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    app = Celery("rlft-service", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        # The workers' own options: what the producer tells the broker must not differ from them.
        broker_transport_options=transport_options(settings.broker_url, settings.broker_visibility_timeout_s),
        # A send must not hang a request when the broker is down: fail fast, the reconciler retries.
        broker_connection_timeout=3,
        broker_connection_max_retries=1,
    )
    return app


class JobQueue:
    def __init__(self, settings: Settings):
        self._settings = settings
        self._app = make_producer(settings)

    def enqueue(self, job_id: str, queue: str) -> bool:
        """Send the job id; False (logged) when the broker is unreachable — the reconciler re-sends."""
        try:
            self._app.send_task(
                TASK_NAME,
                args=[job_id],
                queue=queue,
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
            )
            return True
        except Exception:  # noqa: BLE001 - any broker failure leaves the job for the reconciler
            log.warning("could not enqueue job %s on queue %s; the reconciler will retry", job_id, queue)
            return False

    def ping(self) -> bool:
        try:
            with self._app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            return True
        except Exception:  # noqa: BLE001 - readiness reports any failure as not ready
            return False

    def close(self) -> None:
        self._app.close()
