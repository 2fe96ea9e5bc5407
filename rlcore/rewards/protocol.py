"""The wire formats (README, "The reward protocol"): request bodies and response validation.

``rlft.reward.v1``::

    → {"protocol": "rlft.reward.v1", "job_id", "step", "request_id",
       "items": [{"id", "prompt", "completion", "group", "label", "metadata", "finish_reason"}]}
    ← {"items": [{"id", "reward", "components": {...} | null, "error": null | "..."}]}
    ← or {"rewards": [0.75, ...]}  (request order)

``openrlhf`` (OpenRLHF's remote reward model, so existing servers work unchanged)::

    → {"query": [prompt + completion, ...], "prompts": [...], "labels": [...]}
    ← {"rewards": [...], "scores": [...], "extra_logs": {"name": [...]}}  (scores ignored; numeric
      extra_logs with one value per item kept as components)

Validation is strict: a response that cannot be read as exactly one finite reward (or an ``error``) per
sent item is ``RewardInvalid`` with a message that names the problem and the item.
"""

from __future__ import annotations

import json
from typing import Any

from rlcore.errors import RewardInvalid
from rlcore.rewards.base import (
    OnError,
    RewardBatchResult,
    RewardItem,
    describe_value,
    finite_number,
    resolve_item_error,
)
from rlcore.rewards.secrets import Scrubber

PROTOCOL_V1 = "rlft.reward.v1"
PROTOCOL_OPENRLHF = "openrlhf"


def request_body(protocol: str, job_id: str, step: int, request_id: str, batch: list[RewardItem]) -> dict:
    if protocol == PROTOCOL_OPENRLHF:
        return {
            "query": [i.prompt + i.completion for i in batch],
            "prompts": [i.prompt for i in batch],
            "labels": [i.label for i in batch],
        }
    return {
        "protocol": PROTOCOL_V1,
        "job_id": job_id,
        "step": step,
        "request_id": request_id,
        "items": [
            {
                "id": i.id,
                "prompt": i.prompt,
                "completion": i.completion,
                "group": i.group,
                "label": i.label,
                "metadata": i.metadata,
                "finish_reason": i.finish_reason,
            }
            for i in batch
        ],
    }


def parse_response(
    protocol: str,
    on_error: OnError,
    url: str,
    status: int,
    text: str,
    batch: list[RewardItem],
    scrub: Scrubber | None = None,
) -> RewardBatchResult:
    """The rewards of ``batch`` read from a 2xx response body; raises ``RewardInvalid``.

    ``scrub`` (the request's header values) is applied to every string of the body before anything of it
    is quoted or kept: an endpoint may echo the headers, and messages cut what they quote.
    """
    where = f"reward endpoint {url}"
    data = _json_object(where, status, text, scrub or Scrubber(()))
    if protocol == PROTOCOL_OPENRLHF:
        if "rewards" not in data:
            raise RewardInvalid(f'{where}: the OpenRLHF response has no "rewards" (keys: {sorted(data)})')
        rewards = _bare_rewards(where, data["rewards"], batch)
        return RewardBatchResult(
            rewards, [None] * len(batch), _extra_logs(data.get("extra_logs"), len(batch))
        )
    if "items" in data:
        return _items(where, on_error, data["items"], batch)
    if "rewards" in data:
        return RewardBatchResult(
            _bare_rewards(where, data["rewards"], batch), [None] * len(batch), [None] * len(batch)
        )
    raise RewardInvalid(f'{where}: the response has neither "items" nor "rewards" (keys: {sorted(data)})')


def _json_object(where: str, status: int, text: str, scrub: Scrubber) -> dict[str, Any]:
    if not text.strip():
        raise RewardInvalid(f"{where} answered HTTP {status} with an empty body; expected a JSON object")
    try:
        data = json.loads(text)
    except ValueError:
        raise RewardInvalid(
            f"{where} answered HTTP {status} with a body that is not JSON, starting with {scrub(text)[:80]!r}"
        ) from None
    if not isinstance(data, dict):
        raise RewardInvalid(
            f'{where} answered a JSON {_json_type(data)}; expected an object with "items" or "rewards"'
        )
    return scrub.data(data)


def _json_type(value: Any) -> str:
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number", dict: "object"}
    return names.get(type(value), "null")


def _bare_rewards(where: str, values: Any, batch: list[RewardItem]) -> list[float | None]:
    if not isinstance(values, list):
        raise RewardInvalid(
            f'{where}: "rewards" is a JSON {_json_type(values)}; expected an array of numbers'
        )
    if len(values) != len(batch):
        raise RewardInvalid(
            f'{where}: "rewards" has {len(values)} values for a batch of {len(batch)} items '
            "(one per item, in request order)"
        )
    rewards: list[float | None] = []
    for pos, (value, item) in enumerate(zip(values, batch, strict=True)):
        number = finite_number(value)
        if number is None:
            raise RewardInvalid(
                f'{where}: "rewards"[{pos}] (item {item.id!r}) is {describe_value(value)}; '
                "every reward must be a finite number"
            )
        rewards.append(number)
    return rewards


def _items(where: str, on_error: OnError, entries: Any, batch: list[RewardItem]) -> RewardBatchResult:
    if not isinstance(entries, list):
        raise RewardInvalid(f'{where}: "items" is a JSON {_json_type(entries)}; expected an array')
    sent = {item.id: pos for pos, item in enumerate(batch)}
    answers: dict[str, dict[str, Any]] = {}
    for pos, entry in enumerate(entries):
        item_id = _entry_id(where, pos, entry)
        if item_id not in sent:
            raise RewardInvalid(
                f"{where}: items[{pos}] has id {item_id!r}, which was not sent in this request "
                f"(sent: {_some(list(sent))})"
            )
        if item_id in answers:
            raise RewardInvalid(f"{where}: item {item_id!r} is answered twice")
        answers[item_id] = entry
    missing = [item_id for item_id in sent if item_id not in answers]
    if missing:
        raise RewardInvalid(f"{where}: no answer for {len(missing)} of {len(sent)} items: {_some(missing)}")
    out = RewardBatchResult(rewards=[], errors=[], components=[])
    for item in batch:
        reward, error, components = _entry(where, on_error, item.id, answers[item.id])
        out.rewards.append(reward)
        out.errors.append(error)
        out.components.append(components)
    return out


def _entry_id(where: str, pos: int, entry: Any) -> str:
    if not isinstance(entry, dict):
        raise RewardInvalid(f"{where}: items[{pos}] is a JSON {_json_type(entry)}; expected an object")
    if "id" not in entry:
        raise RewardInvalid(f'{where}: items[{pos}] has no "id"; echo the id of the item it scores')
    item_id = entry["id"]
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
        raise RewardInvalid(
            f"{where}: items[{pos}].id is {describe_value(item_id)}; expected the sent string"
        )
    return str(item_id)


def _entry(
    where: str, on_error: OnError, item_id: str, entry: dict[str, Any]
) -> tuple[float | None, str | None, dict[str, float] | None]:
    error = entry.get("error")
    if error is not None:
        message = error if isinstance(error, str) else json.dumps(error)
        return resolve_item_error(on_error, item_id, message, where), message, None
    if "reward" not in entry:
        raise RewardInvalid(f'{where}: item {item_id!r} has no "reward" and no "error"')
    reward = finite_number(entry["reward"])
    if reward is None:
        raise RewardInvalid(
            f"{where}: item {item_id!r} has reward {describe_value(entry['reward'])}; every reward must be a "
            'finite number (or give the item an "error")'
        )
    return reward, None, _components(where, item_id, entry.get("components"))


def _components(where: str, item_id: str, value: Any) -> dict[str, float] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RewardInvalid(
            f"{where}: item {item_id!r} has components that are a JSON {_json_type(value)}; "
            'expected an object of numbers like {"format": 1.0}'
        )
    components: dict[str, float] = {}
    for name, part in value.items():
        number = finite_number(part)
        if number is None:
            raise RewardInvalid(
                f"{where}: item {item_id!r} has components.{name} = {describe_value(part)}; "
                "expected a finite number"
            )
        components[str(name)] = number
    return components


def _extra_logs(value: Any, n: int) -> list[dict[str, float] | None]:
    """OpenRLHF's ``extra_logs``: keep each numeric log with one value per item as a component."""
    components: list[dict[str, float] | None] = [None] * n
    if not isinstance(value, dict):
        return components
    for name, values in value.items():
        if not isinstance(values, list) or len(values) != n:
            continue
        numbers = [finite_number(v) for v in values]
        if any(x is None for x in numbers):
            continue
        for pos, number in enumerate(numbers):
            components[pos] = {**(components[pos] or {}), str(name): number}  # type: ignore[dict-item]
    return components


def _some(ids: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")
