"""What every part of the job spec shares: the limits on what it may hold, the checks of stored values, and
``_Frozen``, the strict frozen base of every spec model."""

from __future__ import annotations

import enum
import functools
import math
import re
import typing
from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationInfo,
    field_validator,
)

# --- Limits on what a spec may hold. Every input reaches a database, a worker or a reward endpoint: each is
# bounded here, once, so that a bad one is refused at submit with its field instead of failing later.
MAX_JSON_DEPTH = 64  # nesting of labels, metadata and messages in rows (and of an uploaded line)
MAX_STR_LENGTH = 4096  # any string field of the spec (urls, paths, names) unless a field says otherwise
MAX_METADATA_KEYS = 64
MAX_METADATA_VALUE = 512  # characters; key + value stay inside a Postgres btree index row (2,704 bytes)
METADATA_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$"
QUEUE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$"  # the jobs.queue column is 100 characters
MAX_REVISION_LENGTH = 255
MAX_TARGET_MODULES = 256
MAX_HEADERS = 32
MAX_HEADER_NAME = 128
MAX_HEADER_VALUE = 8192
# accelerate's set_seed(seed + rank) seeds numpy's legacy generator, which takes 0 <= seed < 2**32.
MAX_SEED = 2**31 - 1

# RFC 9110 token (header names) and field-value made of visible ASCII with inner spaces/tabs only.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HEADER_VALUE = re.compile(r"^(?:[\x21-\x7e](?:[\x20-\x7e\t]*[\x21-\x7e])?)?$")
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")


class Algorithm(str, enum.Enum):
    GRPO = "grpo"
    PPO = "ppo"


def check_text(value: str, where: str) -> None:
    """Raise ValueError unless ``value`` is text both databases and every JSON encoder accept."""
    bad = _BAD_TEXT.search(value)
    if bad is None:
        return
    if bad.group() == "\x00":
        raise ValueError(f"{where} contains a NUL character (U+0000): remove it")
    raise ValueError(
        f"{where} contains a lone surrogate (an unpaired \\ud800-\\udfff escape): send valid Unicode text"
    )


def check_json_value(value: Any, where: str) -> None:
    """Raise ValueError naming the place unless ``value`` is storable JSON.

    Text (keys too) without NUL or lone surrogates, finite numbers, at most ``MAX_JSON_DEPTH`` levels of
    objects and lists. Iterative, so that no input can exhaust the stack; a path is built only for
    containers and only spelled out on error. Messages never quote a value: the same walk checks reward
    header secrets.
    """
    if not isinstance(value, (dict, list, tuple)):
        _check_leaf(value, (None, where))
        return
    stack: list[tuple[Any, Any, int]] = [(value, (None, where), 0)]
    while stack:
        container, path, depth = stack.pop()
        if depth >= MAX_JSON_DEPTH:
            raise ValueError(f"{_path(path)} nests deeper than {MAX_JSON_DEPTH} levels: flatten it")
        is_dict = isinstance(container, dict)
        for k, item in container.items() if is_dict else enumerate(container):
            if is_dict and isinstance(k, str) and _BAD_TEXT.search(k):
                check_text(k, f"a key in {_path(path)}")
            if isinstance(item, (dict, list, tuple)):
                stack.append((item, (path, k), depth + 1))
            elif isinstance(item, str):
                if _BAD_TEXT.search(item):
                    check_text(item, _path((path, k)))
            elif isinstance(item, float) and not math.isfinite(item):
                _check_leaf(item, (path, k))


def _check_leaf(value: Any, path: Any) -> None:
    if isinstance(value, str):
        check_text(value, _path(path))
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{_path(path)} must be a finite number (not NaN or infinity)")


def _path(path: Any) -> str:
    """``rows[0].label.key`` from the linked (parent, key) pairs; keys that are not plain show as ``<?>``."""
    parts: list[str] = []
    while path is not None:
        path, key = path
        if path is None:
            parts.append(str(key))
        elif isinstance(key, int):
            parts.append(f"[{key}]")
        else:
            parts.append(f".{key}" if isinstance(key, str) and _PLAIN_KEY.fullmatch(key) else ".<?>")
    parts.reverse()
    return "".join(parts if len(parts) <= 12 else [*parts[:8], "…", *parts[-2:]])


class _Frozen(BaseModel):
    # strict: no `true` for a number, no "3" for an int, no 3.0 for an int (an int is fine for a float);
    # enum fields opt out so that their JSON strings keep working from Python dicts too.
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        use_enum_values=False,
        strict=True,
        allow_inf_nan=False,
        str_max_length=MAX_STR_LENGTH,
        hide_input_in_errors=True,
    )

    # Fields whose raw value another check walks already (so that a big inline dataset is walked once).
    _walked_elsewhere: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="before")
    @classmethod
    def _storable(cls, value: Any, info: ValidationInfo) -> Any:
        # Values typed Any (rows, labels, metadata) would otherwise reach Postgres unchecked. A nested
        # spec model's fields walk their own values.
        name = info.field_name or "value"
        if name not in cls._walked_elsewhere and not _holds_spec_model(cls.model_fields[name].annotation):
            check_json_value(value, name)
        return value


@functools.cache
def _holds_spec_model(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, _Frozen):
        return True
    return any(_holds_spec_model(arg) for arg in typing.get_args(annotation))
