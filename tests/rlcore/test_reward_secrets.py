"""Reward header values never come out of the reward client: not in its errors (the HTTP library's text,
an endpoint's body that echoes the headers), not in item errors, not in the exception chain."""

from __future__ import annotations

import secrets
import traceback

import pytest
from pydantic import SecretStr

from rlcore.errors import ConfigError, RewardEndpointUnreachable, RewardInvalid, RewardRejected, RLFTError
from rlcore.rewards import HTTPRewardClient, RewardItem, RewardURLPolicy
from rlcore.rewards.secrets import REDACTED, Scrubber, secret_forms
from rlcore.spec import RewardSpec
from tests.rlcore.reward_servers import RunningServer

FAST = dict(backoff_base_s=0.01, backoff_cap_s=0.05)


def new_token() -> str:
    """A token no message can contain by chance: finding it anywhere is a leak."""
    return "sk-live-" + secrets.token_hex(16)


def client_with(url: str, value: str, **spec) -> HTTPRewardClient:
    # model_construct: the spec's own checks may refuse the value at submit; the client must hold anyway.
    reward = RewardSpec.model_construct(
        url=url, headers={"Authorization": SecretStr(value)}, **{"max_retries": 1, **spec}
    )
    return HTTPRewardClient(reward, job_id="job-1", url_policy=RewardURLPolicy.local(), **FAST)


def one_item() -> list[RewardItem]:
    return [RewardItem(id="1-0-0", prompt="Say:", completion="abc", group=0, label="a")]


def everything_about(exc: BaseException) -> str:
    """The message, the args and the whole printed chain, as a log would show them."""
    return " ".join([str(exc), repr(exc.args), "".join(traceback.format_exception(exc))])


def fails_with(client: HTTPRewardClient, kind: type[RLFTError]) -> RLFTError:
    with client, pytest.raises(kind) as caught:
        client.score(1, one_item())
    return caught.value


@pytest.mark.parametrize("code", [401, 403, 500, 503])
def test_an_error_body_that_echoes_the_headers_is_scrubbed(server: RunningServer, code):
    token = new_token()
    kind = RewardRejected if code < 500 else RewardEndpointUnreachable
    # The client quotes 200 characters of the body; pad puts the token across that cut (a part would show).
    pad = 200 - len("denied, you sent authorization='Bearer ") - 20
    exc = fails_with(client_with(server.url(f"/echo/{code}?pad={pad}"), f"Bearer {token}"), kind)
    assert server.state.seen(f"/echo/{code}")[0]["headers"]["authorization"] == f"Bearer {token}"
    assert f"HTTP {code}" in exc.message and f"authorization='{REDACTED}" in exc.message
    text = everything_about(exc)
    assert token[:12] not in text and token[-12:] not in text


def test_a_non_json_body_quoted_in_part_is_scrubbed_before_the_cut(server: RunningServer):
    token = new_token()
    pad = 80 - len("denied, you sent authorization='") - 20  # the token across the 80-character quote
    exc = fails_with(client_with(server.url(f"/echo/200?pad={pad}"), token), RewardInvalid)
    assert "not JSON" in exc.message and f"authorization='{REDACTED}" in exc.message
    assert token[:10] not in everything_about(exc)


def test_item_errors_and_bad_rewards_that_echo_the_headers_are_scrubbed(server: RunningServer):
    token = new_token()
    with client_with(server.url("/echo_items"), f"Bearer {token}", on_error="skip_sample") as client:
        result = client.score(1, one_item())
    assert result.rewards == [None]
    assert "refused the credentials" in result.errors[0] and REDACTED in result.errors[0]
    assert token not in result.errors[0] and token[:12] not in result.errors[0]

    exc = fails_with(client_with(server.url("/echo_items"), f"Bearer {token}"), RewardInvalid)
    assert "on_error is 'fail'" in exc.message and token[:12] not in everything_about(exc)

    # the bad value is quoted cut at 60 characters, which would show the token's start
    exc = fails_with(client_with(server.url("/echo_items?where=reward"), token), RewardInvalid)
    assert "finite number" in exc.message and token[:8] not in everything_about(exc)


@pytest.mark.parametrize(
    "value",
    [
        "{token} ",  # trailing whitespace
        "Bearer {token}\r\n",
        "Bearer {token}\r\nX-Injected: 1",
        "{token}\x00",
        "\t{token}",
    ],
)
def test_a_header_value_the_http_library_refuses_fails_fast_without_showing_it(server, value):
    token = new_token()
    exc = fails_with(client_with(server.url("/ok"), value.format(token=token)), ConfigError)
    assert exc.code == "invalid_spec"
    assert "reward.headers cannot be sent" in exc.message and "Illegal header value" in exc.message
    assert token not in everything_about(exc)
    assert server.state.seen("/ok") == []  # nothing was sent, and no retry tried


def test_a_non_ascii_header_value_fails_fast_without_showing_it(server):
    token = "sk-é-" + secrets.token_hex(16)
    exc = fails_with(client_with(server.url("/ok"), token), ConfigError)
    assert exc.code == "invalid_spec" and token[5:] not in everything_about(exc)


# -- the scrubber itself ------------------------------------------------------------------------------------


def test_the_scrubber_replaces_the_usual_spellings_of_a_value():
    token = new_token()
    scrub = Scrubber([f"Bearer {token}\r\n"])
    spellings = [
        f"Bearer {token}\r\n",  # as sent
        f"Bearer {token}",  # stripped
        token,  # the credentials alone, as an endpoint may echo them
        repr(f"Bearer {token}\r\n".encode()),  # the HTTP library's "Illegal header value b'...'"
        repr(f"Bearer {token}\r\n"),
        '{"authorization": "Bearer ' + token + '\\r\\n"}',  # JSON
        f"Bearer%20{token}%0D%0A",  # URL-encoded
        f"Bearer+{token}",
    ]
    for text in spellings:
        out = scrub(f"before {text} after")
        assert token not in out and REDACTED in out, text
        assert out.startswith("before ") and out.endswith(" after")


def test_the_scrubber_walks_data_and_models_and_leaves_short_values_alone():
    token = new_token()
    scrub = Scrubber.for_headers({"Authorization": token, "X-Flag": "1"})
    assert scrub.data({"a": [f"x{token}y", 3, None], token: (token,)}) == {
        "a": [f"x{REDACTED}y", 3, None],
        REDACTED: (REDACTED,),
    }
    assert scrub("HTTP 401 after 1 attempt") == "HTTP 401 after 1 attempt"  # "1" is no secret
    assert not Scrubber([]) and Scrubber([])("text") == "text"
    assert secret_forms("abc") == set()


def test_a_value_inside_a_longer_one_does_not_leave_pieces():
    token = new_token()
    scrub = Scrubber([token, f"{token}-and-more"])
    assert scrub(f"[{token}-and-more]") == f"[{REDACTED}]"
