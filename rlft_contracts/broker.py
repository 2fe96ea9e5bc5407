"""The Celery message between the service (producer) and the workers (consumers).

The message is ``TASK_NAME(job_id)``, JSON, nothing else. Both sides build their broker connection with
``transport_options``, so that what the producer and the consumers tell the broker cannot differ.
"""

from __future__ import annotations

TASK_NAME = "rlft.training.run_job"

# Brokers that redeliver an unacknowledged message once its visibility timeout expires (kombu's Redis and
# SQS transports). Others take no such option: kombu's SQLAlchemy transport hands its options to
# create_engine, which rejects unknown ones; AMQP redelivers on a lost connection, not on a timer.
# (``redis`` covers rediss:// and redis+socket://.)
REDELIVERS_BY_TIMEOUT = ("redis", "sqs")


def redelivers_by_timeout(broker_url: str) -> bool:
    return str(broker_url).startswith(REDELIVERS_BY_TIMEOUT)


def transport_options(broker_url: str, visibility_timeout_s: int) -> dict[str, int]:
    """``broker_transport_options`` for ``broker_url``: the visibility timeout where the broker uses one
    (it must outlast the longest job, or the broker delivers a running job again), else none."""
    if redelivers_by_timeout(broker_url):
        return {"visibility_timeout": visibility_timeout_s}
    return {}
