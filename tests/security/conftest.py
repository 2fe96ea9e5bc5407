"""What a hostile tenant, real traffic and malformed input must not do to the service.

The service fixtures (one app per backend: SQLite always, Postgres when RLFT_TEST_DATABASE_URL is set,
tenant keys, a worker's headers and spec builders) are the same as tests/service's.
"""

from tests.service.conftest import (  # noqa: F401 - fixtures are found by name
    WORKER,
    alice,
    bob,
    claim,
    client,
    create_job,
    database_url,
    job_body,
    pg_schema_url,
    settings,
    strict_client,
    wpost,
)
