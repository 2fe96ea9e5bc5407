"""Several rewards through the API (SQLite and Postgres): submit, store and hand to a worker a ``rewards``
list, refuse bad ones naming the field, keep each sample's components, dry-run graders and endpoints."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from rlcore.rewards.secrets import REDACTED
from tests.rlcore.reward_servers import RunningServer, misbehaving_server
from tests.service.conftest import claim, job_body, wpost

ITEMS = [
    {"prompt": "2+2=", "completion": "the answer is 4", "label": "4"},
    {"prompt": "3+3=", "completion": "7", "label": "6"},
]


def token() -> str:
    return "sk-live-" + secrets.token_hex(16)


def graders_and(*http: dict) -> list[dict]:
    return [
        {"type": "number", "name": "correct", "weight": 1.0},
        {"type": "regex", "name": "format", "pattern": r"answer is \d+", "weight": 0.25},
        *http,
    ]


@pytest.fixture(scope="module")
def rewards() -> Iterator[RunningServer]:
    with misbehaving_server() as running:
        yield running


# -- submit, store, claim ------------------------------------------------------------------------------------


def test_a_rewards_list_is_stored_masked_and_reaches_the_worker_in_clear(client, alice, settings):
    a, b = token(), token()
    rewards = graders_and(
        {"type": "http", "name": "judge", "url": "http://127.0.0.1:9/a", "headers": {"Authorization": a}},
        {"type": "http", "name": "style", "url": "http://127.0.0.1:9/b", "headers": {"X-Key": b}},
        {"type": "http", "name": "open", "url": "http://127.0.0.1:9/c"},
    )
    r = client.post("/v1/jobs", json=job_body(reward=None, rewards=rewards), headers=alice)
    assert r.status_code == 201, r.text
    job = r.json()
    assert "reward" not in job["spec"]
    shown = {e["name"]: e for e in job["spec"]["rewards"]}
    assert shown["judge"]["headers"] == {"Authorization": "********"}
    assert shown["style"]["headers"] == {"X-Key": "********"}
    assert shown["correct"] == {
        "name": "correct",
        "weight": 1.0,
        "on_error": "fail",
        "truncated_score": None,
        "type": "number",
        "extract": "last_number",
        "answer_prefix": "Answer:",
        "reference": "{{label}}",
        "rel_tol": 0.0,
        "abs_tol": 1e-6,
    }
    assert a[8:] not in r.text and b[8:] not in r.text

    # At rest: the values are in the encrypted column only, one dict per entry that has headers.
    engine = sa.create_engine(settings.database_url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM jobs")).mappings().one()
    engine.dispose()
    assert a[8:] not in repr(dict(row)) and b[8:] not in repr(dict(row))

    spec = claim(client, job["id"])["spec"]
    got = {e["name"]: e for e in spec["rewards"]}
    assert got["judge"]["headers"] == {"Authorization": a}
    assert got["style"]["headers"] == {"X-Key": b}
    assert got["open"]["headers"] == {}
    assert [e["name"] for e in spec["rewards"]] == ["correct", "format", "judge", "style", "open"]


def test_an_idempotent_retry_with_another_entrys_header_value_is_refused(client, alice):
    a = token()
    judge = {"type": "http", "name": "judge", "url": "http://127.0.0.1:9/a", "headers": {"Authorization": a}}
    h = {**alice, "Idempotency-Key": "list-1"}
    first = client.post("/v1/jobs", json=job_body(reward=None, rewards=graders_and(judge)), headers=h)
    assert first.status_code == 201, first.text
    same = client.post("/v1/jobs", json=job_body(reward=None, rewards=graders_and(judge)), headers=h)
    assert same.status_code == 200 and same.json()["id"] == first.json()["id"]
    other = {**judge, "headers": {"Authorization": token()}}
    r = client.post("/v1/jobs", json=job_body(reward=None, rewards=graders_and(other)), headers=h)
    assert r.status_code == 409 and r.json()["detail"]["code"] == "idempotency_key_reused"


def test_a_job_of_graders_only_needs_no_reward_url(client, alice):
    r = client.post("/v1/jobs", json=job_body(reward=None, rewards=graders_and()), headers=alice)
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    "rewards,extra,field,words",
    [
        ([{"type": "bleu", "name": "a"}], {}, "rewards.0", "type must be one of"),
        (
            [{"type": "regex", "name": "a", "pattern": "(("}],
            {},
            "rewards.0.regex",
            "regular expression",
        ),
        (
            [{"type": "json", "name": "a", "schema": {"type": 3}}],
            {},
            "rewards.0.json.schema",
            "JSON Schema",
        ),
        (
            [{"type": "length", "name": "a", "target": 3, "weight": -1}],
            {},
            "rewards.0.length.weight",
            "0",
        ),
        ([{"type": "length", "name": "a", "target": 3}] * 2, {}, "rewards", "unique"),
        (
            [{"type": "length", "name": "a", "target": 3}],
            {"reward": {"url": "http://x"}},
            "rewards",
            "not both",
        ),
        ([], {}, "rewards", "at least 1"),
    ],
)
def test_bad_rewards_are_422_naming_the_field(client, alice, rewards, extra, field, words):
    body = {**job_body(reward=None, rewards=rewards), **extra}
    r = client.post("/v1/jobs", json=body, headers=alice)
    assert r.status_code == 422, r.text
    error = r.json()["detail"][0]
    assert error["field"] == field
    assert words in error["msg"]


@pytest.mark.parametrize("weight", ["1e400", "NaN", "Infinity"])
def test_a_non_finite_weight_is_422(client, alice, weight):
    body = job_body(reward=None, rewards=[{"type": "length", "name": "a", "target": 3, "weight": 9.5}])
    raw = json.dumps(body).replace('"weight": 9.5', f'"weight": {weight}')
    r = client.post("/v1/jobs", content=raw, headers={**alice, "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert "weight" in r.text


def test_the_url_policy_applies_to_every_http_entry(strict_client):
    client, alice = strict_client
    rewards = graders_and({"type": "http", "name": "judge", "url": "http://127.0.0.1:8000/score"})
    r = client.post("/v1/jobs", json=job_body(reward=None, rewards=rewards), headers=alice)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail["code"] == "reward_url_forbidden" and detail["field"] == "rewards[2].url"


# -- components in samples and metrics -----------------------------------------------------------------------


def test_samples_and_metrics_keep_each_component(client, alice):
    job = client.post("/v1/jobs", json=job_body(reward=None, rewards=graders_and()), headers=alice).json()
    fence = claim(client, job["id"])["fence"]
    sample = {
        "step": 1,
        "index": 0,
        "group": 0,
        "prompt": "2+2=",
        "completion": "the answer is 4",
        "reward": 1.25,
        "label": "4",
        "components": {"correct": 1.0, "format": 1.0, "judge/len": 15.0},
    }
    old_worker = {k: v for k, v in sample.items() if k != "components"} | {"index": 1}
    assert wpost(client, job["id"], "samples", fence=fence, samples=[sample, old_worker]).status_code == 200
    points = [
        {"step": 1, "name": "reward/correct/mean", "value": 0.5},
        {"step": 1, "name": "reward/correct/std", "value": 0.7},
        {"step": 1, "name": "reward/format/mean", "value": 1.0},
    ]
    assert wpost(client, job["id"], "metrics", fence=fence, points=points).status_code == 200

    got = client.get(f"/v1/jobs/{job['id']}/samples", headers=alice).json()["data"]
    assert got[0]["components"] == {"correct": 1.0, "format": 1.0, "judge/len": 15.0}
    assert got[1]["components"] is None
    names = client.get(
        f"/v1/jobs/{job['id']}/metrics", headers=alice, params={"names": "reward/correct/mean"}
    )
    assert [p["value"] for p in names.json()["data"]] == [0.5]


# -- the dry run ---------------------------------------------------------------------------------------------


def test_the_dry_run_scores_graders_and_endpoints_and_shows_each_component(client, alice, rewards):
    body = {
        "rewards": graders_and({"type": "http", "name": "judge", "url": rewards.url("/ok"), "weight": 2.0}),
        "items": ITEMS,
    }
    r = client.post("/v1/rewards/validate", json=body, headers=alice)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["ok"] is True and answer["protocol_error"] is None
    # judge = len(completion)/10 from the server, with its own "len" component.
    assert answer["components"] == [
        {"correct": 1.0, "format": 1.0, "judge": 1.5, "judge/len": 15.0},
        {"correct": 0.0, "format": 0.0, "judge": 0.1, "judge/len": 1.0},
    ]
    assert answer["rewards"] == [pytest.approx(1.0 + 0.25 + 3.0), pytest.approx(0.2)]


def test_the_dry_run_reports_a_graders_item_error_per_item(client, alice):
    body = {"rewards": [{"type": "number", "name": "n", "reference": "{{metadata.answer}}"}], "items": ITEMS}
    answer = client.post("/v1/rewards/validate", json=body, headers=alice).json()
    assert answer["ok"] is False
    assert answer["rewards"] == [None, None]
    assert all("metadata.answer" in e for e in answer["errors"])


def test_every_dry_run_sends_its_own_idempotency_key(client, alice, rewards):
    """Reproduced as a user: a server that honours keys answered "bbbb" with the stored result of "aaaa"."""
    url = rewards.url("/idempotent")
    before = len(rewards.state.seen("/idempotent"))  # the server is shared by both backends' runs
    first = {"reward": {"url": url}, "items": [{"prompt": "p", "completion": "aaaa"}]}
    second = {"reward": {"url": url}, "items": [{"prompt": "p", "completion": "bbbbbbbb"}]}
    r1 = client.post("/v1/rewards/validate", json=first, headers=alice).json()
    r2 = client.post("/v1/rewards/validate", json=second, headers=alice).json()
    r3 = client.post("/v1/rewards/validate", json=first, headers=alice).json()
    assert (r1["rewards"], r2["rewards"], r3["rewards"]) == ([0.4], [0.8], [0.4])
    keys = [req["headers"]["idempotency-key"] for req in rewards.state.seen("/idempotent")[before:]]
    assert len(keys) == len(set(keys)) == 3  # even the same items twice: two dry runs, two requests


def test_the_dry_run_scrubs_every_entrys_header_values(client, alice, rewards):
    a, b = token(), token()
    body = {
        "rewards": [
            {
                "type": "http",
                "name": "one",
                "url": rewards.url("/echo_items"),
                "headers": {"Authorization": a},
            },
            {"type": "http", "name": "two", "url": rewards.url("/echo/401"), "headers": {"Authorization": b}},
        ],
        "items": ITEMS,
    }
    r = client.post("/v1/rewards/validate", json=body, headers=alice)
    assert r.status_code == 200, r.text
    assert REDACTED in r.text
    assert a[8:20] not in r.text and b[8:20] not in r.text


def test_the_dry_run_needs_reward_or_rewards(client, alice):
    r = client.post("/v1/rewards/validate", json={"items": ITEMS}, headers=alice)
    assert r.status_code == 422
    assert "give reward" in r.text
