"""Rewards: the HTTP client against a real misbehaving server, the URL policy, callables, the examples."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from rlcore.errors import (
    ConfigError,
    RewardEndpointUnreachable,
    RewardInvalid,
    RewardRejected,
    RewardURLForbidden,
)
from rlcore.rewards import (
    CallableReward,
    HTTPRewardClient,
    RewardItem,
    check_reward_url,
    component_metrics,
    load_callable,
    make_job_scorer,
    make_reward_scorer,
)
from rlcore.rewards.urlpolicy import RewardURLPolicy, host_allowed
from rlcore.spec import JobSpec, RewardSpec, load_spec
from tests.rlcore.reward_servers import RunningServer, closed_port_url, misbehaving_server

FAST = dict(backoff_base_s=0.01, backoff_cap_s=0.05)
LOCAL = RewardURLPolicy.local()  # the test servers listen on 127.0.0.1


@pytest.fixture
def client_for():
    clients: list[HTTPRewardClient] = []

    def make(url: str, job_id: str = "job-1", **spec) -> HTTPRewardClient:
        client = HTTPRewardClient(RewardSpec(url=url, **spec), job_id=job_id, url_policy=LOCAL, **FAST)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def items(n: int, step: int = 5, completions: list[str] | None = None) -> list[RewardItem]:
    completions = completions or ["a" * (i + 1) for i in range(n)]
    return [
        RewardItem(
            id=f"{step}-{i // 2}-{i % 2}",
            prompt="Say:",
            completion=c,
            group=i // 2,
            label="a",
            metadata={"row": i},
        )
        for i, c in enumerate(completions)
    ]


# -- the protocol -----------------------------------------------------------------------------------------


def test_batches_carry_protocol_body_headers_and_idempotency_keys(server: RunningServer, client_for):
    client = client_for(
        server.url("/ok"),
        headers={"Authorization": "Bearer s3cret", "content-type": "text/plain"},
        batch_size=3,
    )
    sent = items(7)
    result = client.score(5, sent)

    assert result.rewards == [pytest.approx((i + 1) / 10) for i in range(7)]  # the server's len/10
    assert result.errors == [None] * 7
    assert result.components[2] == {"len": 3.0}
    seen = server.state.seen("/ok")
    assert len(seen) == 3
    keys = sorted(r["headers"]["idempotency-key"] for r in seen)
    assert [k.rsplit(":", 1)[0] for k in keys] == ["job-1:5:0", "job-1:5:1", "job-1:5:2"]
    assert all(len(k.rsplit(":", 1)[1]) == 16 for k in keys)  # and a digest of the batch's items
    for r in seen:
        assert r["headers"]["authorization"] == "Bearer s3cret"
        assert r["headers"]["content-type"] == "application/json"
        body = r["body"]
        assert set(body) == {"protocol", "job_id", "step", "request_id", "items"}
        assert (body["protocol"], body["job_id"], body["step"]) == ("rlft.reward.v1", "job-1", 5)
        assert set(body["items"][0]) == {
            "id",
            "prompt",
            "completion",
            "group",
            "label",
            "metadata",
            "finish_reason",
        }
    first = next(r for r in seen if r["headers"]["idempotency-key"].startswith("job-1:5:0:"))["body"][
        "items"
    ][0]
    assert first == {
        "id": "5-0-0",
        "prompt": "Say:",
        "completion": "a",
        "group": 0,
        "label": "a",
        "metadata": {"row": 0},
        "finish_reason": "stop",
    }
    assert result.metrics["reward_endpoint/requests"] == 3
    assert result.metrics["reward_endpoint/retries"] == 0
    assert result.metrics["reward_endpoint/errors"] == 0
    assert (
        0
        < result.metrics["reward_endpoint/latency_p50_ms"]
        <= result.metrics["reward_endpoint/latency_p95_ms"]
    )


def test_bare_rewards_answer_is_read_in_request_order(server, client_for):
    result = client_for(server.url("/bare")).score(1, items(4))
    assert result.rewards == [pytest.approx(x) for x in (0.1, 0.2, 0.3, 0.4)]


def test_concurrency_cap_holds(server, client_for):
    client = client_for(server.url("/ok?delay_ms=150"), batch_size=1, max_concurrency=3)
    client.score(1, items(12))
    assert len(server.state.seen("/ok")) == 12
    assert server.state.max_in_flight == 3


def test_ascore_works_from_a_running_event_loop(server, client_for):
    client = client_for(server.url("/ok"))
    result = asyncio.run(client.ascore(2, items(2)))
    assert result.rewards == [pytest.approx(0.1), pytest.approx(0.2)]


# -- retries ------------------------------------------------------------------------------------------------


def test_a_burst_of_503s_is_retried_and_counted(server, client_for):
    result = client_for(server.url("/flaky?fail=2"), max_retries=4).score(1, items(2))
    assert result.rewards == [pytest.approx(0.1), pytest.approx(0.2)]
    assert len(server.state.seen("/flaky")) == 3
    assert result.metrics["reward_endpoint/retries"] == 2
    assert result.metrics["reward_endpoint/errors"] == 2  # the two failed requests
    assert result.metrics["reward_endpoint/requests"] == 3


def test_retries_exhausted_is_unreachable_naming_url_attempts_and_status(server, client_for):
    url = server.url("/flaky?fail=100&status=502")
    with pytest.raises(RewardEndpointUnreachable) as caught:
        client_for(url, max_retries=2).score(3, items(2))
    assert len(server.state.seen("/flaky")) == 3
    message = str(caught.value)
    assert url in message and "3 attempts" in message and "HTTP 502" in message
    assert caught.value.code == "reward_endpoint_unreachable"


def test_429_waits_for_retry_after(server, client_for):
    result = client_for(server.url("/ratelimit?retry_after=0.4")).score(1, items(2))
    first, second = server.state.seen("/ratelimit")
    assert second["at"] - first["at"] >= 0.4  # the backoff alone would be under 0.05 s
    assert result.metrics["reward_endpoint/retries"] == 1


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_other_4xx_fails_fast_with_status_and_body(server, client_for, status):
    url = server.url(f"/status/{status}")
    with pytest.raises(RewardRejected) as caught:
        client_for(url, max_retries=4).score(1, items(2))
    assert len(server.state.seen(f"/status/{status}")) == 1
    message = str(caught.value)
    assert url in message and f"HTTP {status}" in message and "the token is wrong" in message
    assert "x" * 200 not in message  # the body is cut to its first 200 characters


def test_timeout_is_retried_then_unreachable(server, client_for):
    started = time.monotonic()
    with pytest.raises(RewardEndpointUnreachable, match=r"2 attempts.*timed out after 0.3 s"):
        client_for(server.url("/slow?sleep_s=3"), timeout_s=0.3, max_retries=1).score(1, items(1))
    assert time.monotonic() - started < 2.5
    assert len(server.state.seen("/slow")) == 2


def test_connection_refused_is_retried_then_unreachable(client_for):
    url = closed_port_url()
    with pytest.raises(RewardEndpointUnreachable, match=r"failed after 3 attempts.*ConnectError") as caught:
        client_for(url, max_retries=2).score(1, items(1))
    assert url in str(caught.value)


def test_redirects_are_not_followed(server, client_for):
    with pytest.raises(RewardRejected, match=r"HTTP 307 \(redirects are not followed"):
        client_for(server.url("/redirect")).score(1, items(2))
    assert server.state.seen("/ok") == []


# -- response validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/wrong_length", r'"rewards" has 3 values for a batch of 4 items'),
        ("/nan", r"item '5-1-1' has reward NaN"),
        ("/nonjson", r"not JSON, starting with '<html><body>Welcome to nginx"),
        ("/missing_id", r"no answer for 1 of 4 items: '5-1-1'"),
        ("/duplicate_id", r"item '5-0-0' is answered twice"),
        ("/unknown_id", r"items\[0\] has id 'not-sent', which was not sent"),
    ],
)
def test_invalid_responses_say_exactly_what_is_wrong(server, client_for, path, expected):
    with pytest.raises(RewardInvalid, match=expected) as caught:
        client_for(server.url(path), max_retries=3).score(5, items(4))
    assert server.url(path) in str(caught.value)
    assert len(server.state.seen(path)) == 1  # a wrong answer is not retried


def test_item_error_fails_the_step_under_fail(server, client_for):
    with pytest.raises(RewardInvalid, match=r"item '5-0-1': cannot parse the answer.*on_error is 'fail'"):
        client_for(server.url("/item_error"), on_error="fail").score(
            5, items(3, completions=["a", "bad", "aa"])
        )


@pytest.mark.parametrize(("policy", "expected"), [("zero", 0.0), ("skip_sample", None)])
def test_item_error_policies(server, client_for, policy, expected):
    result = client_for(server.url("/item_error"), on_error=policy).score(
        5, items(3, completions=["a", "bad", "aa"])
    )
    assert result.rewards == [pytest.approx(0.1), expected, pytest.approx(0.2)]
    assert result.errors == [None, "cannot parse the answer", None]
    assert result.metrics["reward_endpoint/errors"] == 1


def test_openrlhf_mode_speaks_openrlhf(server, client_for):
    sent = items(3)
    result = client_for(server.url("/openrlhf"), protocol="openrlhf", batch_size=2).score(1, sent)
    bodies = [r["body"] for r in server.state.seen("/openrlhf")]
    assert len(bodies) == 2 and set(bodies[0]) == {"query", "prompts", "labels"}
    assert bodies[0] == {"query": ["Say:a", "Say:aa"], "prompts": ["Say:", "Say:"], "labels": ["a", "a"]}
    assert result.rewards == [pytest.approx(len("Say:" + i.completion) / 10) for i in sent]
    assert result.components[0] == {"qlen": 5.0}


def test_closed_client_refuses_to_score(server):
    client = HTTPRewardClient(RewardSpec(url=server.url("/ok")))
    client.close()
    client.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        client.score(1, items(1))


# -- URL policy ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "allow_private", "reason"),
    [
        ("http://127.0.0.1:8001/", False, "loopback"),
        ("http://localhost:8001/", False, "resolves to 127.0.0.1, which is a loopback"),
        ("http://10.1.2.3/", False, "private"),
        ("http://169.254.169.254/latest/meta-data", True, "cloud metadata"),
        ("http://[fd00:ec2::254]/", True, "cloud metadata"),
        ("http://100.100.100.200/", True, "cloud metadata"),
        ("http://[::ffff:169.254.169.254]/", True, "cloud metadata"),
        ("http://169.254.10.1/", True, "link-local"),
        ("http://[fe80::1]/", True, "link-local"),
        ("http://user:pw@example.com/", True, "credentials"),
        ("ftp://example.com/reward", True, "scheme 'ftp' is not allowed"),
        # IPv6 forms that carry an IPv4 address are judged by the IPv4 host they reach
        ("http://[::ffff:127.0.0.1]/", False, r"reaches 127\.0\.0\.1 .*loopback"),  # IPv4-mapped
        ("http://[64:ff9b::7f00:1]/", False, r"reaches 127\.0\.0\.1 .*loopback"),  # NAT64 well-known
        ("http://[64:ff9b::a00:5]:8000/", False, r"reaches 10\.0\.0\.5 .*private"),
        ("http://[64:ff9b::a9fe:a9fe]/", True, "reaches 169.254.169.254 .*cloud metadata"),
        # NAT64 local-use: never public itself; where private is allowed, every RFC 6052 position is judged
        ("http://[64:ff9b:1::808:808]/", False, "local-use NAT64 address .* never public"),
        ("http://[64:ff9b:1::a9fe:a9fe]/", True, "reaches 169.254.169.254 .*cloud metadata"),  # /96
        ("http://[64:ff9b:1:a9fe:a9:fe00::]/", True, "never allowed"),  # 169.254.169.254 at /48
        ("http://[64:ff9b:1:0:a9:fea9:fe00:0]/", True, "never allowed"),  # 169.254.169.254 at /64
        ("http://[::7f00:1]/", False, r"reaches 127\.0\.0\.1 .*loopback"),  # IPv4-compatible
        ("http://[::a9fe:a9fe]/", True, "cloud metadata"),
        ("http://[::ffff:0:7f00:1]/", False, r"reaches 127\.0\.0\.1 .*loopback"),  # SIIT
        ("http://[::ffff:0:a9fe:a9fe]/", True, "cloud metadata"),
        ("http://[2002:7f00:1::1]/", False, r"reaches 127\.0\.0\.1 .*loopback"),  # 6to4
        ("http://[2002:c0a8:101::1]/", False, r"reaches 192\.168\.1\.1 .*private"),
        ("http://[2002:a9fe:a9fe::1]/", True, "cloud metadata"),
        # Teredo: the client address is stored inverted (0x80fffffe is 127.0.0.1)
        ("http://[2001:0:4136:e378:8000:63bf:5601:5601]/", True, "reaches 169.254.169.254 .*cloud metadata"),
        ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", False, "Teredo address .* never public"),
    ],
)
def test_url_policy_refuses(url, allow_private, reason):
    with pytest.raises(RewardURLForbidden, match=reason):
        check_reward_url(url, allow_private=allow_private, allowlist=None)


@pytest.mark.parametrize(
    "url",
    [
        "http://[64:ff9b::808:808]/",  # NAT64 to 8.8.8.8
        "http://[::ffff:8.8.8.8]/",
        "http://[::808:808]/",
        "http://[::ffff:0:808:808]/",
        "http://[2002:808:808::1]/",
        "http://[2606:4700:4700::1111]/",  # a plain public IPv6 address embeds nothing
    ],
)
def test_url_policy_allows_ipv6_forms_of_public_ipv4_addresses(url):
    check_reward_url(url, allow_private=False, allowlist=None)


@pytest.mark.parametrize(
    "url",
    [
        "http://[64:ff9b::7f00:1]/",
        "http://[64:ff9b:1::a00:5]/",
        "http://[2002:a00:5::1]/",
        "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",  # Teredo to 127.0.0.1
    ],
)
def test_url_policy_allows_embedded_private_addresses_only_when_asked(url):
    check_reward_url(url, allow_private=True, allowlist=None)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8001/", "http://localhost/", "https://10.0.0.8/score", "http://8.8.8.8/"]
)
def test_url_policy_allows_private_only_when_asked(url):
    check_reward_url(url, allow_private=True, allowlist=None)


def test_url_policy_allows_public_addresses():
    check_reward_url("https://8.8.8.8/reward", allow_private=False, allowlist=None)


def test_allowlist():
    assert host_allowed("api.rewards.example.com", ["*.example.com"])
    assert not host_allowed("example.com.evil.net", ["*.example.com"])
    assert not host_allowed("badexample.com", ["*.example.com"])
    check_reward_url("http://localhost:9/", allow_private=True, allowlist=["localhost"])
    with pytest.raises(RewardURLForbidden, match="not in this server's allowlist"):
        check_reward_url("http://8.8.8.8/", allow_private=True, allowlist=["*.example.com"])


def test_client_applies_the_policy_before_sending(server):
    with HTTPRewardClient(RewardSpec(url=server.url("/ok")), url_policy=RewardURLPolicy(), **FAST) as client:
        with pytest.raises(RewardURLForbidden, match="loopback"):
            client.score(1, items(2))
    assert server.state.requests == []


def test_client_rechecks_the_policy_when_the_verdict_expires(server):
    spec = RewardSpec(url=server.url("/ok"))
    policy = RewardURLPolicy(allow_private=True, allowlist=("127.0.0.1",))
    with HTTPRewardClient(spec, url_policy=policy, url_check_ttl_s=0, **FAST) as client:
        client.score(1, items(1))
        # Stands in for DNS that changed after submit.
        client.url_policy = RewardURLPolicy(allow_private=True, allowlist=("rewards.example.com",))
        with pytest.raises(RewardURLForbidden, match="allowlist"):
            client.score(2, items(1))
    assert len(server.state.seen("/ok")) == 1


def test_no_items_no_requests(server, client_for):
    result = client_for(server.url("/ok")).score(1, [])
    assert result.rewards == [] and server.state.requests == []


# -- Python callables ---------------------------------------------------------------------------------------


def test_callable_gets_row_fields_and_returns_rewards():
    seen = {}

    def fn(prompts, completions, **fields):
        seen.update(fields, prompts=prompts)
        return np.array([len(c) for c in completions], dtype=np.float32)  # arrays are accepted

    result = CallableReward(fn).score(5, items(3))
    assert result.rewards == [1.0, 2.0, 3.0]
    assert seen["labels"] == ["a"] * 3 and seen["groups"] == [0, 0, 1]
    assert seen["metadata"] == [{"row": 0}, {"row": 1}, {"row": 2}] and seen["prompts"] == ["Say:"] * 3
    assert result.metrics["reward_endpoint/requests"] == 1


@pytest.mark.parametrize(
    ("returns", "expected"),
    [
        ([1.0], r"returned 1 rewards for 3 completions"),
        ([1.0, math.nan, 1.0], r"returned NaN for item '5-0-1'"),
        ([1.0, "0.5", 1.0], r"returned '0.5' \(a str\) for item '5-0-1'"),
        ([1.0, 1.0, math.inf], r"returned inf for item '5-1-0'"),
        (0.5, r"returned float; it must return a list of 3 numbers"),
    ],
)
def test_callable_bad_values_raise(returns, expected):
    with pytest.raises(RewardInvalid, match=expected):
        CallableReward(lambda p, c, **_: returns).score(5, items(3))


def test_callable_exception_raises_with_its_type():
    def broken(prompts, completions, **_):
        raise KeyError("answer")

    with pytest.raises(RewardInvalid, match=r"broken raised KeyError: 'answer'"):
        CallableReward(broken).score(1, items(2))


def test_callable_none_goes_through_on_error():
    def fn(prompts, completions, **_):
        return [1.0, None]

    with pytest.raises(RewardInvalid, match=r"item '5-0-1'.*returned None"):
        CallableReward(fn).score(5, items(2))
    assert CallableReward(fn, on_error="zero").score(5, items(2)).rewards == [1.0, 0.0]
    skipped = CallableReward(fn, on_error="skip_sample").score(5, items(2))
    assert skipped.rewards == [1.0, None] and skipped.errors[1] is not None


def test_load_callable(tmp_path: Path, monkeypatch):
    (tmp_path / "my_rewards_mod.py").write_text(
        "def score(prompts, completions, **_):\n    return [1.0] * len(completions)\nNOT_FN = 3\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_callable("my_rewards_mod:score")(["p"], ["c"]) == [1.0]
    with pytest.raises(ConfigError, match="must look like module:function"):
        load_callable("my_rewards_mod")
    with pytest.raises(ConfigError, match="cannot import module 'no_such_mod_xyz'.*ModuleNotFoundError"):
        load_callable("no_such_mod_xyz:score")
    with pytest.raises(ConfigError, match="has no attribute 'nope'"):
        load_callable("my_rewards_mod:nope")
    with pytest.raises(ConfigError, match="is a int, not a function"):
        load_callable("my_rewards_mod:NOT_FN")


def test_make_reward_scorer_picks_the_source(server):
    def fn(prompts, completions, **_):
        return [0.0] * len(completions)

    spec = RewardSpec(url=server.url("/ok"))
    assert isinstance(make_reward_scorer(spec, reward_fn=fn), CallableReward)
    scorer = make_reward_scorer(spec, job_id="j")
    try:
        assert isinstance(scorer, HTTPRewardClient)
    finally:
        scorer.close()
    with pytest.raises(ConfigError, match="set reward.url in the spec or pass --reward-fn module:function"):
        make_reward_scorer(RewardSpec())


# -- the example servers ------------------------------------------------------------------------------------


def v1(*completions: str, label=None, metadata=None) -> dict:
    return {
        "protocol": "rlft.reward.v1",
        "job_id": "j",
        "step": 1,
        "request_id": "r",
        "items": [
            {
                "id": str(i),
                "prompt": "p",
                "completion": c,
                "group": 0,
                "label": label,
                "metadata": metadata or {},
            }
            for i, c in enumerate(completions)
        ],
    }


def test_example_letter(monkeypatch):
    from examples.rewards.letter import app

    client = TestClient(app)
    monkeypatch.setenv("RLFT_LETTER", "b")
    answer = client.post("/", json=v1("aab", "", label="a")).json()
    assert answer == {"items": [{"id": "0", "reward": pytest.approx(2 / 3)}, {"id": "1", "reward": 0.0}]}
    assert client.post("/", json=v1("abbb", label="too long")).json()["items"][0]["reward"] == 0.75
    assert client.post("/", json={"items": [{"id": "1"}]}).status_code == 422


def test_example_exact_match():
    from examples.rewards.exact_match import app

    answer = TestClient(app).post("/", json=v1("so it is 5.0", "the answer: 6", "...", label="5")).json()
    assert [i["reward"] for i in answer["items"]] == [1.0, 0.0, 0.0]
    assert [i["components"] for i in answer["items"]] == [
        {"format": 1.0, "correct": 1.0},
        {"format": 1.0, "correct": 0.0},
        {"format": 0.0, "correct": 0.0},
    ]


def test_example_length_format():
    from examples.rewards.length_format import app

    answer = TestClient(app).post("/", json=v1("x" * 10, "x" * 5, "x\nx" * 3, metadata={"target_length": 10}))
    rewards = [i["reward"] for i in answer.json()["items"]]
    assert rewards == [1.0, 0.5, 0.0]


def test_example_openrlhf_letter_at_both_paths():
    from examples.rewards.openrlhf_letter import app

    client = TestClient(app)
    for path in ("/", "/get_reward"):
        body = {"query": ["Say:aab", "Go:zz"], "prompts": ["Say:", "Go:"], "labels": ["a", "a"]}
        answer = client.post(path, json=body).json()
        assert answer["rewards"] == [pytest.approx(2 / 3), 0.0]
        assert set(answer) == {"rewards", "scores", "extra_logs"}


def test_example_letter_through_the_client():
    """The demo's path end to end: the real client against the real example app on uvicorn."""
    from examples.rewards.letter import app
    from tests.support.servers import serve_app

    with serve_app(app) as url, HTTPRewardClient(RewardSpec(url=url + "/"), url_policy=LOCAL, **FAST) as c:
        result = c.score(1, items(2, completions=["aa", "ab"]))
    assert result.rewards == [1.0, 0.5]


@pytest.mark.parametrize("name", ["grpo_letter", "ppo_letter", "grpo_exact_match", "grpo_openrlhf"])
def test_example_specs_validate(name):
    spec = load_spec(str(Path(__file__).parents[2] / "examples" / "specs" / f"{name}.yaml"))
    assert spec.reward.url and spec.reward.url.startswith("http://127.0.0.1:8001")
    # YAML reads `5e-3` as a string: the specs write `5.0e-3`, and a float must come back.
    assert isinstance(spec.hyperparameters.learning_rate, float) and spec.hyperparameters.learning_rate > 0
    assert spec.model.name_or_path == ".models/tiny"


# -- several rewards with weights -------------------------------------------------------------------------


def job_spec(rewards: list[dict]) -> JobSpec:
    return JobSpec.model_validate(
        {
            "model": {"name_or_path": "m"},
            "dataset": {"rows": [{"prompt": "p", "label": "a"}]},
            "rewards": rewards,
        }
    )


def test_the_total_is_the_weighted_sum_of_graders_and_endpoints_with_every_component(server):
    spec = job_spec(
        [
            {"type": "string_check", "name": "has_a", "operation": "like", "weight": 2.0},
            {"type": "regex", "name": "only_a", "pattern": "a+", "full_match": True, "weight": 0.5},
            {"type": "http", "name": "judge", "url": server.url("/ok"), "weight": 3.0},
        ]
    )
    sent = items(3, completions=["aa", "ab", "bb"])
    with make_job_scorer(spec, job_id="job-9", url_policy=LOCAL) as scorer:
        result = scorer.score(5, sent)
    # judge = len/10 (the server), with its own component "len" carried as judge/len.
    assert result.components == [
        {"has_a": 1.0, "only_a": 1.0, "judge": 0.2, "judge/len": 2.0},
        {"has_a": 1.0, "only_a": 0.0, "judge": 0.2, "judge/len": 2.0},
        {"has_a": 0.0, "only_a": 0.0, "judge": 0.2, "judge/len": 2.0},
    ]
    assert result.rewards == [
        pytest.approx(2.0 + 0.5 + 0.6),
        pytest.approx(2.0 + 0.6),
        pytest.approx(0.6),
    ]
    assert result.errors == [None] * 3
    assert result.metrics["reward_endpoint/judge/requests"] == 1  # each endpoint keeps its own namespace
    assert "reward_grader/has_a/ms" in result.metrics


def test_http_entries_run_at_the_same_time_as_each_other():
    with misbehaving_server() as server:  # its own: no request of another test still in flight
        spec = job_spec(
            [{"type": "http", "name": f"slow{i}", "url": server.url("/slow?sleep_s=0.5")} for i in range(3)]
            + [{"type": "length", "name": "len", "target": 2}]
        )
        with make_job_scorer(spec, job_id="job-9", url_policy=LOCAL) as scorer:
            result = scorer.score(1, items(2))
        assert server.state.max_in_flight == 3  # all three endpoints were waited on together
    # "a" and "aa" are one approximate token each: half the target, -0.5.
    assert result.rewards == [pytest.approx(3 * 0.1 - 0.5), pytest.approx(3 * 0.2 - 0.5)]


def test_an_entry_that_skips_an_item_drops_it_from_the_total(server):
    spec = job_spec(
        [
            {"type": "number", "name": "num", "on_error": "skip_sample"},  # label "a" is no number
            {"type": "string_check", "name": "has_a", "operation": "like"},
        ]
    )
    with make_job_scorer(spec, url_policy=LOCAL) as scorer:
        result = scorer.score(1, items(1, completions=["a"]))
    assert result.rewards == [None]
    assert result.components == [{"has_a": 1.0}]
    assert result.errors[0].startswith("num: ValueError: the reference is not a number")


def test_an_entry_under_fail_fails_the_step_naming_it(server):
    spec = job_spec(
        [{"type": "number", "name": "num"}, {"type": "http", "name": "judge", "url": server.url("/ok")}]
    )
    with make_job_scorer(spec, url_policy=LOCAL) as scorer, pytest.raises(RewardInvalid, match="grader num"):
        scorer.score(1, items(1))


def test_a_replayed_step_keeps_its_key_only_when_its_items_are_the_same(server, client_for):
    client = client_for(server.url("/idempotent"), job_id="job-7")
    first = client.score(3, items(2, step=3, completions=["aaaa", "bb"]))
    again = client.score(3, items(2, step=3, completions=["aaaa", "bb"]))
    other = client.score(3, items(2, step=3, completions=["b", "bbbbbbbb"]))
    keys = [r["headers"]["idempotency-key"] for r in server.state.seen("/idempotent")]
    assert keys[0] == keys[1] != keys[2]
    assert first.rewards == again.rewards == [0.4, 0.2]
    assert other.rewards == [0.1, 0.8]  # scored anew, not the stored answer of the first rollout


def test_two_entries_on_one_endpoint_send_different_keys(server):
    spec = job_spec(
        [{"type": "http", "name": n, "url": server.url("/idempotent")} for n in ("judge_a", "judge_b")]
    )
    with make_job_scorer(spec, job_id="job-3", url_policy=LOCAL) as scorer:
        scorer.score(1, items(1))
    keys = sorted(r["headers"]["idempotency-key"] for r in server.state.seen("/idempotent"))
    assert [k.split(":")[0] for k in keys] == ["job-3/judge_a", "job-3/judge_b"]


def test_every_local_run_has_its_own_job_id(server):
    spec = RewardSpec(url=server.url("/ok"))
    ids = set()
    for _ in range(2):
        with make_reward_scorer(spec, url_policy=LOCAL) as scorer:
            scorer.score(1, items(1))
    with HTTPRewardClient(spec, url_policy=LOCAL, **FAST) as library_use:  # no job id given
        library_use.score(1, items(1))
    for request in server.state.seen("/ok"):
        ids.add(request["body"]["job_id"])
    assert len(ids) == 3 and all(i.startswith("local-") for i in ids)


def test_component_metrics_are_mean_and_std_over_the_items_that_have_them():
    metrics = component_metrics([{"a": 1.0, "b": 0.0}, {"a": 0.0}, None, {"a": 1.0}])
    assert metrics == {
        "reward/a/mean": pytest.approx(2 / 3),
        "reward/a/std": pytest.approx(((1 / 9 + 4 / 9 + 1 / 9) / 2) ** 0.5),
        "reward/b/mean": 0.0,
        "reward/b/std": 0.0,
    }


def test_openrlhf_extra_logs_are_components_of_the_entry(server):
    spec = job_spec([{"type": "http", "name": "rm", "url": server.url("/openrlhf"), "protocol": "openrlhf"}])
    with make_job_scorer(spec, url_policy=LOCAL) as scorer:
        result = scorer.score(1, items(2))
    assert all("rm" in c and any(k.startswith("rm/") for k in c) for c in result.components)


def test_example_specs_with_graders_validate_and_score():
    root = Path(__file__).parents[2] / "examples" / "specs"
    graders = load_spec(str(root / "grpo_arithmetic_graders.yaml"))
    assert graders.reward is None and graders.http_rewards() == []  # no server at all
    with make_job_scorer(graders) as scorer:
        result = scorer.score(1, [RewardItem(id="1", prompt="2+3=", completion=" 5", group=0, label="5")])
    assert result.components == [{"correct": 1.0, "length": 0.0}] and result.rewards == [1.0]
    mixed = load_spec(str(root / "grpo_http_and_regex.yaml"))
    assert [(e.name, e.type) for e in mixed.rewards] == [("judge", "http"), ("format", "regex")]
    assert mixed.rewards[0].url.startswith("http://127.0.0.1:8001")


# -- the policy object --------------------------------------------------------------------------------------


def test_the_policy_denies_private_hosts_unless_asked_like_the_settings():
    from rlft_contracts.settings import Settings

    default = RewardURLPolicy()
    assert default == RewardURLPolicy.from_settings(Settings())  # the engine's default is the operator's
    with pytest.raises(RewardURLForbidden, match="loopback"):
        default.check("http://127.0.0.1:9/reward")
    RewardURLPolicy.local().check("http://127.0.0.1:9/reward")
    default.check("https://8.8.8.8/reward")


def test_the_policy_comes_whole_from_the_settings_and_survives_the_trip_to_the_training_process():
    from rlft_contracts.settings import Settings

    settings = Settings(allow_private_reward_urls=True, reward_url_allowlist="localhost, *.example.com")
    policy = RewardURLPolicy.from_settings(settings)
    assert policy == RewardURLPolicy(allow_private=True, allowlist=("localhost", "*.example.com"))
    assert RewardURLPolicy.from_json(policy.to_json()) == policy
    assert RewardURLPolicy.from_json(RewardURLPolicy().to_json()) == RewardURLPolicy()
    policy.check("http://localhost:9/")
    with pytest.raises(RewardURLForbidden, match="allowlist"):
        policy.check("http://127.0.0.1:9/")
    # An empty allowlist setting is no allowlist: any public host.
    assert RewardURLPolicy.from_settings(Settings(reward_url_allowlist="")).allowlist is None


def test_an_engine_client_without_a_policy_refuses_a_private_endpoint(server):
    with HTTPRewardClient(RewardSpec(url=server.url("/ok")), **FAST) as client:
        with pytest.raises(RewardURLForbidden, match="loopback"):
            client.score(1, items(1))
    assert server.state.requests == []
