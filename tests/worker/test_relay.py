"""The relay buffers while the service is unreachable and then delivers every item once, in order."""

from __future__ import annotations

import pytest

from worker.relay import BATCH_LIMITS, LeaseLost, Relay, ServiceClient, ServiceRejected, ServiceUnavailable


def _client(server) -> ServiceClient:
    return ServiceClient(server.url, "s3cret", "job-1", timeout_s=2.0)


def test_buffers_while_down_then_flushes_everything_in_order(recording_server):
    relay = Relay(_client(recording_server), fence=7, backoff_initial_s=0.05, backoff_max_s=0.2)
    n = BATCH_LIMITS["metrics"] + 20
    for step in range(n):
        relay.add("metrics", {"step": step, "name": "reward/mean", "value": step / 10})
    relay.add("checkpoints", {"step": 5, "location": "/x"})
    relay.add("events", {"level": "info", "type": "message", "message": "after", "data": {}})

    assert relay.flush() is False  # nothing listens on the port yet: kept, not lost
    assert relay.pending == n + 2
    recording_server.start()
    assert relay.drain(timeout_s=10) is True

    paths = [path for path, _, _ in recording_server.requests]
    assert paths == ["/internal/v1/jobs/job-1/" + p for p in ("metrics", "metrics", "checkpoints", "events")]
    metric_bodies = recording_server.ok_bodies("/metrics")
    assert [len(b["points"]) for b in metric_bodies] == [BATCH_LIMITS["metrics"], 20]
    steps = [p["step"] for b in metric_bodies for p in b["points"]]
    assert steps == list(range(n))
    assert all(b["fence"] == 7 for _, _, b in recording_server.requests)
    assert recording_server.ok_bodies("/checkpoints") == [{"fence": 7, "step": 5, "location": "/x"}]
    headers = recording_server.requests[0][1]
    assert headers["Authorization"] == "Bearer s3cret"


def test_retries_5xx_and_429_without_losing_or_repeating(recording_server):
    recording_server.start()
    recording_server.script = [503, 429, 500]
    relay = Relay(_client(recording_server), fence=1, backoff_initial_s=0.01, backoff_max_s=0.05)
    relay.add("events", {"level": "info", "type": "message", "message": "one", "data": {}})
    assert relay.drain(timeout_s=5)
    assert len(recording_server.requests) == 4  # three refusals, then the one delivery
    assert relay.pending == 0


def test_backoff_does_not_block_the_caller(recording_server):
    relay = Relay(_client(recording_server), fence=1, backoff_initial_s=30, backoff_max_s=30)
    relay.add("events", {"level": "info", "type": "message", "message": "x", "data": {}})
    assert relay.flush() is False
    recording_server.start()
    # Still inside the backoff window: returns at once without trying.
    assert relay.flush() is False
    assert recording_server.requests == []


def test_stale_fence_raises_lease_lost(recording_server):
    recording_server.start()
    recording_server.script = [409]
    relay = Relay(_client(recording_server), fence=1)
    relay.add("metrics", {"step": 1, "name": "a", "value": 1.0})
    with pytest.raises(LeaseLost):
        relay.flush()


def test_a_rejected_batch_is_dropped_so_later_items_still_go(recording_server):
    recording_server.start()
    recording_server.script = [422]
    relay = Relay(_client(recording_server), fence=1)
    relay.add("samples", {"step": 1, "index": 0})
    relay.add("events", {"level": "info", "type": "message", "message": "next", "data": {}})
    assert relay.flush() is True
    assert [p.rsplit("/", 1)[1] for p, _, _ in recording_server.requests] == ["samples", "events"]


def test_client_sorts_outcomes(recording_server):
    recording_server.start()
    client = _client(recording_server)
    recording_server.script = [409, 503, 404]
    with pytest.raises(LeaseLost):
        client.call("heartbeat", {"fence": 1})
    with pytest.raises(ServiceUnavailable):
        client.call("heartbeat", {"fence": 1})
    with pytest.raises(ServiceRejected):
        client.call("heartbeat", {"fence": 1})
    assert client.call("heartbeat", {"fence": 1})["action"] == "continue"


def test_unknown_kind_is_refused(recording_server):
    relay = Relay(_client(recording_server), fence=1)
    with pytest.raises(ValueError, match="unknown relay kind"):
        relay.add("bogus", {})


def test_a_batch_the_service_keeps_failing_with_500_is_split_and_only_its_bad_item_dropped(recording_server):
    recording_server.start()
    # The batch fails 3 times; then one by one: item 0 passes, item 1 fails 3 times, item 2 passes.
    recording_server.script = [500, 500, 500, 200, 500, 500, 500, 200]
    relay = Relay(_client(recording_server), fence=1, backoff_initial_s=0.01, backoff_max_s=0.02)
    for i in range(3):
        relay.add("samples", {"step": 1, "index": i})
    relay.add("events", {"level": "info", "type": "message", "message": "after", "data": {}})
    assert relay.drain(timeout_s=10)
    assert relay.dropped == 1
    sent = [(p.rsplit("/", 1)[1], b) for p, _, b in recording_server.requests]
    assert [len(b["samples"]) for kind, b in sent if kind == "samples"] == [3, 3, 3, 1, 1, 1, 1, 1]
    assert sent[-1][0] == "events"


def test_an_outage_never_drops_anything(recording_server):
    recording_server.start()
    recording_server.script = [503] * 8 + [502] * 4
    relay = Relay(_client(recording_server), fence=1, backoff_initial_s=0.005, backoff_max_s=0.01)
    relay.add("metrics", {"step": 1, "name": "a", "value": 1.0})
    assert relay.drain(timeout_s=10)
    assert relay.dropped == 0 and len(recording_server.requests) == 13
