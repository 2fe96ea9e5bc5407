"""The Celery app, configured for long GPU tasks, and the check that refuses a configuration that breaks it.

Run a worker with ``celery -A worker.celery_app worker -Q gpu,cpu --pool solo --without-gossip
--without-mingle --without-heartbeat`` (or ``rlft worker``): one job per worker, one worker per GPU slot
(``CUDA_VISIBLE_DEVICES`` passes through to the training process). A solo worker busy with a job cannot
answer gossip, so those only add noise. A warm shutdown (SIGTERM, ``docker stop``) makes the training
process checkpoint and stop; give it the time to (``stop_grace_period``), or the job resumes from the
previous checkpoint. The broker is Redis when ``RLFT_BROKER_URL`` points at one; the embedded default is
kombu's SQLAlchemy transport on a SQLite file, which needs no server.

Why each setting:
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a job whose worker dies is not acknowledged, so the
  broker can deliver it again; the service's lease decides whether a second delivery may run it.
- ``worker_prefetch_multiplier=1``: a worker busy for hours must not hold jobs another worker could start.
- JSON only, no result backend: tasks carry only the job id; results live in the service's database.
- Redis ``visibility_timeout`` longer than the hard time limit, which is longer than the longest allowed
  job: otherwise Redis redelivers a job that is still running, on every visibility timeout.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, bootsteps
from kombu import Exchange, Queue

from rlft_contracts.broker import TASK_NAME, redelivers_by_timeout, transport_options
from rlft_contracts.settings import Settings, get_settings

log = logging.getLogger(__name__)
QUEUES = ("gpu", "cpu")
# Time the hard limit leaves after the job's own limit: the engine checkpoints and the relay flushes.
TIME_LIMIT_MARGIN_S = 300
_BROKER_SCHEMES = ("redis", "rediss", "sqla+", "amqp", "pyamqp", "sqs", "memory")


class ImproperlyConfigured(RuntimeError):
    """The worker's configuration would lose or duplicate jobs; the message says what to change."""


def celery_config(settings: Settings) -> dict[str, Any]:
    queues = dict.fromkeys((*QUEUES, settings.default_queue))
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": transport_options(
            settings.broker_url, settings.broker_visibility_timeout_s
        ),
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": settings.job_time_limit_s + TIME_LIMIT_MARGIN_S,
        "task_queues": [Queue(name, Exchange(name), routing_key=name) for name in queues],
        "task_default_queue": settings.default_queue,
        "task_routes": {TASK_NAME: {"queue": settings.default_queue}},
        # A lost broker connection must not kill a training run: a second delivery is refused by the lease.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_hijack_root_logger": False,
    }


def validate_config(conf: Any, settings: Settings) -> list[str]:
    """Every way ``conf`` (a Celery app's conf) breaks the rules for long GPU tasks, as messages."""
    problems = []
    if not conf.task_acks_late:
        problems.append("task_acks_late must be True: a job whose worker dies must be delivered again")
    if not conf.task_reject_on_worker_lost:
        problems.append("task_reject_on_worker_lost must be True: a lost worker must not acknowledge its job")
    if conf.worker_prefetch_multiplier != 1:
        problems.append("worker_prefetch_multiplier must be 1: a busy worker must not hold other jobs")
    if conf.task_serializer != "json" or set(conf.accept_content or ()) != {"json"}:
        problems.append("task_serializer and accept_content must be JSON only")
    if conf.result_backend:
        problems.append("result_backend must be unset: job results live in the service's database")
    limit = conf.task_time_limit
    visibility = (conf.broker_transport_options or {}).get("visibility_timeout")
    if not limit or limit <= settings.job_time_limit_s:
        problems.append(
            f"task_time_limit ({limit}) must exceed RLFT_JOB_TIME_LIMIT_S ({settings.job_time_limit_s}): "
            "the job needs time to checkpoint after its own limit"
        )
    elif redelivers_by_timeout(conf.broker_url) and (visibility is None or visibility <= limit):
        problems.append(
            f"RLFT_BROKER_VISIBILITY_TIMEOUT_S ({visibility}) must exceed the hard time limit ({limit} s = "
            f"RLFT_JOB_TIME_LIMIT_S + {TIME_LIMIT_MARGIN_S}), or the broker redelivers running jobs; "
            f"set it to at least {limit + 1} or lower RLFT_JOB_TIME_LIMIT_S"
        )
    if not str(conf.broker_url).startswith(_BROKER_SCHEMES):
        problems.append(
            f"RLFT_BROKER_URL {conf.broker_url!r}: expected redis://host:6379/0 or sqla+sqlite:///path"
        )
    return problems


def check_config(conf: Any, settings: Settings) -> None:
    problems = validate_config(conf, settings)
    if problems:
        raise ImproperlyConfigured("the worker refuses to start:\n  - " + "\n  - ".join(problems))


class ConfigCheck(bootsteps.Step):
    """A worker bootstep that aborts the start on a broken configuration (signal handlers cannot: Celery
    logs and swallows their exceptions)."""

    def __init__(self, parent: Any, **kwargs: Any):
        try:
            check_config(parent.app.conf, get_settings())
        except ImproperlyConfigured as exc:
            raise SystemExit(f"rlft worker: {exc}") from None  # the message, without a traceback
        super().__init__(parent, **kwargs)


class RemoveLeftoverSecrets(bootsteps.Step):
    """A worker bootstep that deletes the reward headers older workers left on disk (``spec.json`` in
    attempt directories, kept by a SIGKILL), before the first job arrives."""

    requires = (ConfigCheck,)

    def __init__(self, parent: Any, **kwargs: Any):
        from worker.launch import jobs_dir, remove_leftover_secrets

        removed = remove_leftover_secrets(jobs_dir(get_settings()))
        if removed:
            log.info("removed %d spec files with reward headers left by earlier workers", removed)
        super().__init__(parent, **kwargs)


def create_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    celery = Celery("rlft", include=["worker.tasks"])
    celery.conf.update(celery_config(settings))
    celery.steps["worker"].add(ConfigCheck)
    celery.steps["worker"].add(RemoveLeftoverSecrets)
    return celery


app = create_celery()
