"""The Python client against a real API process: jobs, errors, metrics, SSE (with a dropped connection),
checkpoint download."""

from __future__ import annotations

import hashlib

import pytest

from rlft.client import (
    APIConnectionError,
    AuthenticationError,
    Client,
    ConflictError,
    NotFoundError,
    ValidationError,
)
from rlft_contracts.localproc import free_port
from tests.cli.conftest import DroppingProxy, StandInWorker, letter_spec

pytestmark = pytest.mark.e2e


@pytest.fixture
def client(api):
    with Client(api.url, api.key) as c:
        yield c


def test_create_get_list_and_idempotent_retry(client, api):
    spec = letter_spec(api.reward_url)
    job = client.jobs.create(spec, idempotency_key="retry-me")
    again = client.jobs.create(spec, idempotency_key="retry-me")
    assert again.id == job.id
    assert job.status == "queued" and job.total_steps == 3
    assert client.jobs.get(job.id).spec["hyperparameters"]["steps"] == 3
    assert job.id in [j.id for j in client.jobs.list(status="queued", limit=100).data]


def test_cancel_then_resume_is_a_conflict(client, api):
    job = client.jobs.create(letter_spec(api.reward_url))
    assert client.jobs.cancel(job.id).status == "cancelled"
    with pytest.raises(ConflictError) as info:
        client.jobs.resume(job.id)
    assert info.value.status_code == 409


def test_a_bad_spec_is_refused_with_the_field(client, api):
    with pytest.raises(ValidationError) as info:
        client.jobs.create(letter_spec(api.reward_url, group_size=1))
    assert info.value.status_code == 422
    assert "group_size" in info.value.message


def test_a_wrong_key_is_an_authentication_error(api):
    with Client(api.url, "rlft_not-a-key") as c, pytest.raises(AuthenticationError) as info:
        c.jobs.list()
    assert info.value.status_code == 401


def test_an_unreachable_api_is_a_connection_error():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Client(url, "k", timeout=2) as c, pytest.raises(APIConnectionError) as info:
        c.jobs.list()
    assert url in info.value.message


def test_a_tenant_cannot_see_another_tenants_job(api, finished_job):
    with Client(api.url, api.other_key) as other, pytest.raises(NotFoundError):
        other.jobs.get(finished_job[0])


def test_metrics_filter_by_name_and_step(client, finished_job):
    job_id, rewards = finished_job
    points = client.jobs.metrics(job_id, names=["reward/mean"])
    assert {p.step: p.value for p in points} == pytest.approx(rewards)
    assert [p.step for p in client.jobs.metrics(job_id, after_step=2, names=["reward/mean"])] == [3]
    job = client.jobs.get(job_id)
    assert job.status == "succeeded" and job.latest_metrics["reward/mean"] == pytest.approx(0.3)


def test_stream_yields_every_event_once_and_ends_with_the_job(client, finished_job):
    job_id, rewards = finished_job
    events = list(client.jobs.stream_events(job_id))
    assert [int(e.id) for e in events] == [int(e.id) for e in client.jobs.events(job_id)]
    assert {
        e.metrics()[0]: e.metrics()[1]["reward/mean"] for e in events if e.type == "metrics"
    } == pytest.approx(rewards)
    assert events[-1].type == "status" and events[-1].status() == "succeeded"


def test_stream_resumes_after_a_dropped_connection_without_losing_points(api, client, finished_job):
    job_id, _ = finished_job
    expected = [int(e.id) for e in client.jobs.events(job_id)]
    proxy = DroppingProxy(int(api.url.rsplit(":", 1)[1]), nth=3)
    try:
        with Client(f"http://127.0.0.1:{proxy.port}", api.key) as through_proxy:
            got = [int(e.id) for e in through_proxy.jobs.stream_events(job_id)]
    finally:
        proxy.close()
    assert proxy.connections >= 2  # the first was cut, so the client came back
    assert got == expected


def test_the_stream_of_a_paused_job_ends_at_the_pause(client, api):
    job = client.jobs.create(letter_spec(api.reward_url))
    worker = StandInWorker(api)
    fence = worker.claim(job.id)
    client.jobs.pause(job.id)
    worker.finish(job.id, fence, "paused")
    assert [e.status() for e in client.jobs.stream_events(job.id)][-1] == "paused"


def test_a_pause_that_was_resumed_does_not_end_the_stream(client, api):
    job = client.jobs.create(letter_spec(api.reward_url))
    worker = StandInWorker(api)
    fence = worker.claim(job.id)
    worker.report(job.id, fence, 1, 0.1)
    assert client.jobs.pause(job.id).status == "pausing"
    worker.finish(job.id, fence, "paused")
    assert client.jobs.resume(job.id).status == "queued"
    fence = worker.claim(job.id)
    worker.report(job.id, fence, 2, 0.2)
    worker.finish(job.id, fence)
    events = list(client.jobs.stream_events(job.id))
    assert "paused" in [e.status() for e in events]  # replayed, and followed past
    assert [e.metrics()[0] for e in events if e.type == "metrics"] == [1, 2]
    assert events[-1].status() == "succeeded"


def test_stream_starts_after_a_given_event_id(client, finished_job):
    job_id, _ = finished_job
    all_ids = [int(e.id) for e in client.jobs.events(job_id)]
    later = [int(e.id) for e in client.jobs.stream_events(job_id, last_event_id=str(all_ids[1]))]
    assert later == all_ids[2:]


def test_download_writes_a_loadable_model_directory(client, finished_job, tmp_path, api):
    job_id, _ = finished_job
    [ckpt] = client.jobs.checkpoints(job_id)
    assert ckpt.step == 3
    out = client.jobs.download_checkpoint(job_id, tmp_path / "model")
    source = api.data_dir / "artifacts" / job_id / "step-000003" / "model"
    for path in source.iterdir():
        assert (
            hashlib.sha256((out / path.name).read_bytes()).digest()
            == hashlib.sha256(path.read_bytes()).digest()
        ), path.name
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "qwen2"


def test_download_of_a_missing_step_names_the_steps_there_are(client, finished_job, tmp_path):
    with pytest.raises(NotFoundError, match=r"no checkpoint at step 7 \(steps: 3\)"):
        client.jobs.download_checkpoint(finished_job[0], tmp_path, step=7)
