"""Keeping reward header values out of every message: one scrubber for the engine, the worker and the API.

The headers of a job's reward (``RewardSpec.header_values()``) are secrets, yet text about a request can
carry them: the HTTP library quotes a header it refuses (``Illegal header value b'sk-...\\r\\n'``), an
endpoint may echo the request's headers in its error body, a traceback shows both. Every message that
leaves the engine (errors, events, outbox lines, the child's log, the dry run's answer) goes through
``Scrubber``, which replaces each known value in the forms text usually shows it in:

- the value as sent, stripped of surrounding whitespace, and its credentials alone (``sk-1`` of
  ``Bearer sk-1``: an endpoint may echo the token without its scheme);
- each of those as Python's ``repr`` shows a str or the bytes (escaped CR/LF/NUL/non-ASCII), JSON-escaped,
  and URL-encoded.

Values shorter than ``MIN_SECRET_CHARS`` are not scrubbed: a value that short is no secret (a flag such as
``1`` or ``yes``), and replacing it would garble every number in a message. Scrub the whole text *before*
cutting it to a length: a cut can leave a part of a value that no longer matches.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, TypeVar
from urllib.parse import quote, quote_plus

from pydantic import BaseModel

REDACTED = "[redacted]"
MIN_SECRET_CHARS = 4
# The environment variable through which the worker hands a job's reward headers to its training process
# (and accelerate launch to each rank): never on disk, never on a command line.
REWARD_HEADERS_ENV = "RLFT_REWARD_HEADERS"
# "Bearer sk-1", "Basic dXNlcjpwdw==": an RFC 9110 auth-scheme token, then the credentials.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*\s+(\S.*)$", re.DOTALL)

M = TypeVar("M", bound=BaseModel)


def secret_forms(value: str) -> set[str]:
    """The spellings of ``value`` that text about a request may contain (see the module docstring)."""
    bases = {value, value.strip()}
    for whole in (value, value.strip()):
        if match := _SCHEME.match(whole):
            bases |= {match.group(1), match.group(1).strip()}
    forms: set[str] = set()
    for base in bases:
        if len(base) < MIN_SECRET_CHARS:
            continue
        forms |= {
            base,
            repr(base)[1:-1],
            repr(base.encode("utf-8", "surrogateescape"))[2:-1],
            json.dumps(base)[1:-1],
            json.dumps(base, ensure_ascii=False)[1:-1],
            quote(base, safe=""),
            quote_plus(base, safe=""),
        }
    return {f for f in forms if len(f) >= MIN_SECRET_CHARS}


class Scrubber:
    """Replaces the known secret values in text (``scrubber(text)``) or in JSON-like data (``.data``)."""

    def __init__(self, values: Iterable[str]):
        forms = set().union(*(secret_forms(v) for v in values if isinstance(v, str)))
        # Longest first: a form that contains another is replaced whole, not around the shorter one.
        ordered = sorted(forms, key=lambda f: (-len(f), f))
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        self.longest = len(ordered[0]) if ordered else 0

    @classmethod
    def for_headers(cls, headers: dict[str, Any] | None) -> Scrubber:
        """A scrubber for a job's header values: a reward's ``{name: value}`` (``header_values()``), or the
        ``{entry: {name: value}}`` of several (``JobSpec.header_secrets()``): the union of all values."""
        from rlcore.spec import secret_values

        return cls(secret_values(headers))

    def __bool__(self) -> bool:
        return self._pattern is not None

    def __call__(self, text: str) -> str:
        if self._pattern is None or not isinstance(text, str):
            return text
        return self._pattern.sub(REDACTED, text)

    def data(self, value: Any) -> Any:
        """Every string in ``value`` (dicts, lists, tuples; keys too) scrubbed; other values unchanged."""
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self.data(k): self.data(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.data(v) for v in value)
        return value

    def model(self, model: M) -> M:
        """A pydantic model with every string scrubbed (validated again, so a broken result shows)."""
        if self._pattern is None:
            return model
        return type(model).model_validate(self.data(model.model_dump(mode="json")))
