"""Prometheus across API processes: two uvicorn processes sharing PROMETHEUS_MULTIPROC_DIR, as
``rlft serve --workers 2`` runs them; a scrape of either answers the sums over both."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rlft_contracts.settings import Settings
from tests.service.conftest import WORKER
from tests.service.test_push import Reader, _wait_until
from tests.service.test_sse import start_job
from tests.support.stacks import api_process


def _scrape(base: str) -> dict[tuple[str, tuple], float]:
    r = httpx.get(f"{base}/metrics", headers=WORKER)
    assert r.status_code == 200, r.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def _points(base: str, jid: str, fence: int, step: int, n: int) -> None:
    body = {"fence": fence, "points": [{"step": step, "name": f"m/{i}", "value": 1.0} for i in range(n)]}
    httpx.post(f"{base}/internal/v1/jobs/{jid}/metrics", json=body, headers=WORKER).raise_for_status()


def test_counters_histograms_and_gauges_add_up_over_two_processes(
    settings: Settings, alice: dict, tmp_path: Path
) -> None:
    shared = tmp_path / "prometheus"
    shared.mkdir()
    ingested = ("rlft_ingested_total", (("kind", "metric_points"),))
    route = "/internal/v1/jobs/{job_id}/metrics"
    posts = (
        "rlft_http_request_duration_seconds_count",
        (("method", "POST"), ("route", route), ("status", "200")),
    )
    subscribers = ("rlft_sse_subscribers", ())
    with (
        api_process(settings, PROMETHEUS_MULTIPROC_DIR=str(shared)) as a,
        api_process(settings, PROMETHEUS_MULTIPROC_DIR=str(shared)) as b,
    ):
        jid, fence = start_job(a, alice)
        _points(a, jid, fence, 1, 30)
        _points(b, jid, fence, 2, 20)
        _points(b, jid, fence, 3, 5)
        # Each reader drops its stream once it has the three metrics events.
        readers = [
            Reader(f"{base}/v1/jobs/{jid}/events/stream", alice, until=lambda r: len(r.steps()) == 3)
            for base in (a, b, b)
        ]
        for base in (a, b):  # either process answers the sums
            seen = _scrape(base)
            assert seen[ingested] == 55
            assert seen[posts] == 3
            assert seen[("rlft_jobs", (("state", "running"),))] == 1  # read once from the database
        _wait_until(lambda: _scrape(b).get(subscribers) == 0, "the closed streams to be uncounted")
    assert [r.steps() for r in readers] == [[1, 2, 3]] * 3


def test_rlft_serve_with_workers_starts_from_an_empty_multiprocess_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rlft import cli
    from rlft_contracts.settings import get_settings

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")  # restored (unset) after the test
    monkeypatch.setenv("RLFT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RLFT_DEV_MODE", "1")
    get_settings.cache_clear()
    stale = tmp_path / "prometheus" / "counter_12345.db"
    stale.parent.mkdir()
    stale.write_bytes(b"from an earlier run")
    started: dict = {}
    monkeypatch.setattr("uvicorn.run", lambda *a, **kw: started.update(kw))
    try:
        assert cli.main(["serve", "--workers", "2", "--port", "1"]) == 0
    finally:
        get_settings.cache_clear()
    assert started["workers"] == 2
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path / "prometheus")
    assert not stale.exists()  # an earlier run's values are not added in
