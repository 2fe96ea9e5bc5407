"""What the service, the worker and the CLI agree on across process boundaries (docs/contracts.md).

Torch-free and free of FastAPI, SQL and Celery imports, so that every part can import it: the broker's
task name and transport options (``broker``), how a worker ends a job attempt (``jobs``), and the
``RLFT_*`` settings every process reads (``settings``), and how a local process is started and which GPUs
it sees (``localproc``: the worker, ``rlft up`` and the tests). What the engine
also needs lives lower, in rlcore: the job error codes (``rlcore.errors.ErrorCode``) and the file layout
of a job (``rlcore.layout``).
"""
