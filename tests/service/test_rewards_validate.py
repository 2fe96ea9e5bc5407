"""POST /v1/rewards/validate: the dry run against a real reward server, through the engine's own client."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from examples.rewards.exact_match import app as exact_match_app
from tests.support.servers import ServerThread

ITEMS = [
    {"prompt": "2+2=", "completion": "the answer is 4", "label": "4"},
    {"prompt": "3+3=", "completion": "7", "label": "6"},
]


def _odd_app() -> FastAPI:
    """/garbage answers a non-protocol body; /auth needs a header; /half reports an error for one item."""
    app = FastAPI()

    @app.post("/garbage")
    async def garbage() -> dict:
        return {"hello": "world"}

    @app.post("/auth")
    async def auth(request: Request) -> dict:
        body = await request.json()
        ok = request.headers.get("authorization") == "Bearer k"
        return {"items": [{"id": it["id"], "reward": 1.0 if ok else 0.0} for it in body["items"]]}

    @app.post("/half")
    async def half(request: Request) -> dict:
        items = (await request.json())["items"]
        return {"items": [{"id": items[0]["id"], "reward": 0.5}, {"id": items[1]["id"], "error": "no label"}]}

    return app


@pytest.fixture(scope="module")
def reward_servers() -> Iterator[tuple[str, str]]:
    with ServerThread(exact_match_app) as good, ServerThread(_odd_app()) as odd:
        yield good.url, odd.url


def _validate(client: TestClient, headers: dict, reward: dict, items: list | None = None):
    return client.post(
        "/v1/rewards/validate", json={"reward": reward, "items": items or ITEMS}, headers=headers
    )


def test_rewards_and_latency_come_back(
    client: TestClient, alice: dict, reward_servers: tuple[str, str]
) -> None:
    good, _ = reward_servers
    r = _validate(client, alice, {"url": f"{good}/"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["protocol_error"] is None, body
    assert body["ok"] is True
    assert body["rewards"] == [1.0, 0.0]
    assert body["latency_ms"] > 0


def test_protocol_errors_and_item_errors_are_reported(
    client: TestClient, alice: dict, reward_servers: tuple[str, str]
) -> None:
    _, odd = reward_servers
    garbage = _validate(client, alice, {"url": f"{odd}/garbage"}).json()
    assert garbage["ok"] is False and garbage["protocol_error"]["code"] == "reward_invalid"
    half = _validate(client, alice, {"url": f"{odd}/half"}).json()
    assert half["rewards"][0] == 0.5 and half["rewards"][1] is None
    assert "no label" in half["errors"][1] and half["ok"] is False
    auth = _validate(client, alice, {"url": f"{odd}/auth", "headers": {"Authorization": "Bearer k"}}).json()
    assert auth["rewards"] == [1.0, 1.0]
    assert "Bearer k" not in str(auth)


def test_unreachable_endpoint_and_forbidden_url(client: TestClient, alice: dict) -> None:
    down = _validate(client, alice, {"url": "http://127.0.0.1:9/score", "max_retries": 0}).json()
    assert down["protocol_error"]["code"] == "reward_endpoint_unreachable"
    r = _validate(client, alice, {"url": "http://169.254.169.254/"})
    assert r.status_code == 422 and r.json()["detail"]["code"] == "reward_url_forbidden"
    assert client.post(
        "/v1/rewards/validate", json={"reward": {"url": "http://x/"}, "items": []}, headers=alice
    )
