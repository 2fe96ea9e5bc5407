"""Reward header values through the API (SQLite and Postgres): the dry run never answers them back, an
Idempotency-Key retry with other values is a 409 (the stored hash is keyed, never the values), and a
reward URL on an IPv6 form of a loopback address is refused at submit."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient

from rlcore.rewards.secrets import REDACTED
from rlcore.spec import JobSpec
from service.crypto import HeaderCipher
from service.submit import _request_hash
from tests.rlcore.reward_servers import RunningServer, misbehaving_server
from tests.service.conftest import job_body

ITEMS = [{"prompt": "2+2=", "completion": "4", "label": "4"}, {"prompt": "3+3=", "completion": "6"}]


def new_token() -> str:
    """A token no answer can contain by chance: finding it anywhere is a leak."""
    return "sk-live-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def rewards() -> Iterator[RunningServer]:
    with misbehaving_server() as running:
        yield running


def validate(client: TestClient, headers: dict, url: str, value: str, **reward):
    body = {"reward": {"url": url, "headers": {"Authorization": value}, **reward}, "items": ITEMS}
    return client.post("/v1/rewards/validate", json=body, headers=headers)


# -- the dry run -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [401, 500])
def test_the_dry_run_never_answers_an_echoed_header_value(client, alice, rewards, code):
    token = new_token()
    r = validate(client, alice, rewards.url(f"/echo/{code}?pad=100"), f"Bearer {token}", max_retries=0)
    assert r.status_code == 200, r.text
    error = r.json()["protocol_error"]
    assert error["code"] == ("reward_endpoint_rejected" if code < 500 else "reward_endpoint_unreachable")
    assert f"authorization='{REDACTED}" in error["message"]
    assert token[8:20] not in r.text
    # the endpoint did get the value: the scrubbing is in the answer, not in what was sent
    assert rewards.state.seen(f"/echo/{code}")[-1]["headers"]["authorization"] == f"Bearer {token}"


def test_the_dry_run_scrubs_item_errors_that_echo_a_header_value(client, alice, rewards):
    token = new_token()
    r = validate(client, alice, rewards.url("/echo_items"), f"Bearer {token}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] is False and body["rewards"] == [None, None]
    assert all("refused the credentials" in e and REDACTED in e for e in body["errors"])
    assert token[8:20] not in r.text


@pytest.mark.parametrize("value", ["Bearer {token} ", "Bearer {token}\r\nX-Injected: 1", "{token}\x00"])
def test_a_header_value_the_http_library_refuses_is_never_answered_back(client, alice, rewards, value):
    token = new_token()
    r = validate(client, alice, rewards.url("/ok"), value.format(token=token))
    # Refused at the edge (422) where the spec checks header values, else by the client: never a 500.
    assert r.status_code in (200, 422), r.text
    if r.status_code == 200:
        assert r.json()["protocol_error"]["code"] == "invalid_spec"
    assert token[8:20] not in r.text


# -- Idempotency-Key ---------------------------------------------------------------------------------------


def test_an_idempotent_retry_with_other_header_values_is_refused(client, alice, settings):
    token, other = new_token(), new_token()
    h = {**alice, "Idempotency-Key": "with-secret-1"}
    reward = {"url": "http://127.0.0.1:9/score", "headers": {"Authorization": f"Bearer {token}"}}
    first = client.post("/v1/jobs", json=job_body(reward=reward), headers=h)
    assert first.status_code == 201, first.text

    same = client.post("/v1/jobs", json=job_body(reward=reward), headers=h)
    assert same.status_code == 200 and same.json()["id"] == first.json()["id"]

    changed = {**reward, "headers": {"Authorization": f"Bearer {other}"}}
    r = client.post("/v1/jobs", json=job_body(reward=changed), headers=h)
    assert r.status_code == 409, r.text
    assert r.json()["detail"]["code"] == "idempotency_key_reused"
    assert other[8:20] not in r.text and token[8:20] not in r.text

    # Nothing stored holds a value in clear (the headers column is encrypted, the hash keyed).
    engine = sa.create_engine(settings.database_url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM jobs")).mappings().all()
    engine.dispose()
    assert len(rows) == 1
    assert token[8:20] not in repr(dict(rows[0]))
    # The stored hash is keyed by the server's secret: without it, no guessed value can be tested.
    spec = JobSpec.model_validate(job_body(reward=reward))
    key = settings.resolved_encryption_key()
    assert rows[0]["request_hash"] == _request_hash(spec, HeaderCipher(key))
    assert rows[0]["request_hash"] != _request_hash(spec, HeaderCipher(Fernet.generate_key().decode()))


# -- the URL policy at submit ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["[64:ff9b::7f00:1]", "[::7f00:1]", "[::ffff:0:7f00:1]", "[2002:7f00:1::1]", "[::ffff:127.0.0.1]"]
)
def test_submit_refuses_ipv6_forms_of_loopback(strict_client, host):
    client, alice = strict_client
    r = client.post("/v1/jobs", json=job_body(reward={"url": f"http://{host}:8000/score"}), headers=alice)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail["code"] == "reward_url_forbidden" and detail["field"] == "reward.url"
    assert "127.0.0.1" in detail["message"]


def test_what_a_worker_reports_is_scrubbed_again_by_the_api(client, alice):
    """A worker that reports a header value in clear (an older one, a bug) cannot get it stored."""
    from tests.service.conftest import WORKER

    token = new_token()
    body = job_body(
        reward={"url": "http://127.0.0.1:9/score", "headers": {"Authorization": f"Bearer {token}"}}
    )
    job = client.post("/v1/jobs", json=body, headers=alice).json()
    claimed = client.post(f"/internal/v1/jobs/{job['id']}/claim", json={"worker_id": "w"}, headers=WORKER)
    fence = claimed.json()["fence"]
    leak = f"endpoint said: bad credentials Bearer {token}"
    event = {"level": "error", "message": leak, "data": {"echo": token}}
    r = client.post(
        f"/internal/v1/jobs/{job['id']}/events", json={"fence": fence, "events": [event]}, headers=WORKER
    )
    assert r.status_code == 200
    r = client.post(
        f"/internal/v1/jobs/{job['id']}/finish",
        json={
            "fence": fence,
            "status": "failed",
            "error": {"code": "reward_endpoint_rejected", "message": leak},
        },
        headers=WORKER,
    )
    assert r.status_code == 200 and token not in r.text
    shown = client.get(f"/v1/jobs/{job['id']}", headers=alice).text
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=alice).text
    assert token not in shown and token not in events
    assert REDACTED in shown and REDACTED in events
