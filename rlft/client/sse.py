"""Server-Sent Events as the API sends them: the WHATWG framing, each event's JSON as an :class:`Event`."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from rlft.client.models import Event


def parse_sse(lines: Iterable[str]) -> Iterator[tuple[str | None, str]]:
    """Yield (id, data) per dispatched SSE event (WHATWG rules: blank line dispatches, ':' comments)."""
    data: list[str] = []
    event_id: str | None = None
    for line in lines:
        if not line:
            if data:
                yield event_id, "\n".join(data)
            data, event_id = [], None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            data.append(value)
        elif field == "id":
            event_id = value
    if data:
        yield event_id, "\n".join(data)


def decode_event(sse_id: str | None, data: str) -> Event | None:
    try:
        payload = json.loads(data)
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    if payload.get("id") is None and sse_id is not None:
        payload["id"] = sse_id
    return Event.model_validate(payload)
