"""Celery workers: claim a job from the service, supervise the training process, relay what it reports.

The worker holds no database credentials; it talks to the service over ``/internal/v1`` only
(docs/contracts.md). Importing this package must stay light: torch is imported by the training child only.
"""
