"""Property-based run over the OpenAPI schema: whatever a client sends, the API never answers 5xx.

Bounded (``max_examples`` per operation) so that it stays well under two minutes; SQLite only, since the
routes are the same code on both databases and the route tests cover Postgres.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from service.app import create_app
from service.db import migrate
from service.keys import create_api_key
from tests.service.conftest import WORKER, job_body, make_settings

MAX_EXAMPLES = 20


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, str], str]:
    tmp: Path = tmp_path_factory.mktemp("schemathesis")
    # Private reward URLs stay refused: generated URLs must never make the service call local ports.
    s = make_settings(tmp, f"sqlite:///{tmp / 'rlft.db'}", allow_private_reward_urls=False)
    migrate(s)
    app = create_app(s)
    tenant = {"Authorization": f"Bearer {create_api_key(s, 'fuzz')}"}
    # A public IP literal passes the URL policy without DNS; it is never called.
    body = job_body(reward={"url": "http://93.184.216.34/score"})
    with TestClient(app) as client:
        job_id = client.post("/v1/jobs", json=body, headers=tenant).json()["id"]
    return app, tenant, job_id


def _aim_at_real_job(case: schemathesis.Case, job_id: str, n: int) -> None:
    """Every other case names the real job, so that handlers past the ownership check run too.

    Not the SSE stream: on a job that never finishes it would (rightly) never end.
    """
    params = case.path_parameters or {}
    if "job_id" in params and n % 2 == 0 and not case.path.endswith("/stream"):
        params["job_id"] = job_id


def _headers(case: schemathesis.Case, tenant: dict[str, str]) -> dict[str, str]:
    headers = {**(case.headers or {})}
    headers["Authorization"] = (WORKER if case.path.startswith("/internal/") else tenant)["Authorization"]
    return headers


def test_no_server_errors(api: tuple[Any, dict[str, str], str]) -> None:
    app, tenant, job_id = api
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def check(case: schemathesis.Case) -> None:
            _aim_at_real_job(case, job_id, len(statuses) + sum(statuses.values()))
            response = case.call(headers=_headers(case, tenant))
            statuses[response.status_code] += 1
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]}"
                )

        check()
    assert not failures, "\n".join(failures[:20])
    # The run must have reached handlers, not only the validation layer.
    assert statuses[200] + statuses[201] > 0 and statuses[422] > 0, statuses
