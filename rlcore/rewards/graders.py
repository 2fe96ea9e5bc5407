"""Built-in graders: rewards without a server (string_check, regex, number, json, length).

Each grader is fixed Python in the engine; a spec only parameterises it (``rlcore.spec`` entries), so no
code a tenant writes ever runs in the service or a worker. A grader scores one item at a time and is bounded:

- patterns (the ``regex`` grader, a JSON Schema's ``pattern``) run on the ``regex`` package with a per-item
  time limit (``REGEX_TIMEOUT_S``); a pattern that backtracks catastrophically fails that item, not the job;
- ``patternProperties`` (whose matching jsonschema does with the backtracking ``re``) is refused at submit;
- every other grader is linear in the completion.

An exception on one item (a time limit, a reference that is not a number) is that item's error, handled by
the entry's ``on_error``, like an endpoint's per-item ``error``. Scores: 1.0 / 0.0 for the checks, a
penalty in [-1, 0] for ``length``.

Departures from OpenAI's graders: references take ``{{label}}`` and ``{{metadata.KEY}}`` (our dataset
rows), not ``{{item.*}}``; ``like`` is "contains", as OpenAI documents, not SQL's ``%`` patterns.
"""

from __future__ import annotations

import functools
import json
import math
import re
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import regex

from rlcore.rewards.base import RewardBatchResult, RewardItem, resolve_item_error
from rlcore.spec import (
    JSONEntry,
    LengthEntry,
    NumberEntry,
    RegexEntry,
    StringCheckEntry,
)

REGEX_TIMEOUT_S = 0.25
METRIC_GRADER_MS = "reward_grader/{name}/ms"
_FLAGS = {"ignorecase": regex.IGNORECASE, "multiline": regex.MULTILINE, "dotall": regex.DOTALL}
_TEMPLATE = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n(.*?)```", re.DOTALL)
# A number as people write it: 1,234.5  -3  +7  .5  2/3  1e-3 (each part bounded: no backtracking blow-up).
_NUMBER_CANDIDATE = re.compile(r"[-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?(?:\s*/\s*[-+]?\d+)?")
TokenCounter = Callable[[str], int]
MAX_REPEAT = 1000
MAX_REPEAT_PRODUCT = 100_000
_COUNTED = re.compile(r"\{\s*(\d{1,12})\s*(?:,\s*(\d{0,12})\s*)?\}")


def compile_pattern(pattern: str, flags: list[str] | tuple[str, ...] = ()) -> regex.Pattern:
    """``pattern`` compiled, once its counted repetitions are bounded (see ``check_repetitions``)."""
    return _compile(pattern, tuple(flags))


@functools.lru_cache(maxsize=256)
def _compile(pattern: str, flags: tuple[str, ...]) -> regex.Pattern:
    check_repetitions(pattern)
    value = 0
    for flag in flags:
        value |= _FLAGS[flag]
    return regex.compile(pattern, value)


def check_repetitions(pattern: str) -> None:
    """Raise ValueError for counted repetitions that would make compiling itself unbounded.

    The engine unrolls ``{n,m}``: ``a{1000000000}`` never finishes compiling, nested counts multiply. Each
    count is capped at ``MAX_REPEAT`` and the product of all of them (nested or not: an over-estimate) at
    ``MAX_REPEAT_PRODUCT``, which compiles in well under a second.
    """
    product = 1
    for match in _COUNTED.finditer(pattern):
        counts = [int(x) for x in match.groups() if x]
        if max(counts) > MAX_REPEAT:
            raise ValueError(
                f"pattern repeats {{{match.group()[1:-1]}}} times; counts are limited to {MAX_REPEAT}"
            )
        product *= max(1, max(counts))
        if product > MAX_REPEAT_PRODUCT:
            raise ValueError(
                f"pattern's counted repetitions multiply past {MAX_REPEAT_PRODUCT}: "
                "use fewer or smaller {{n}}"
            )


def approx_tokens(text: str) -> int:
    """Tokens as a tokenizer-free guess (UTF-8 bytes / 4), for the dry run; training counts real tokens."""
    return math.ceil(len(text.encode("utf-8", "surrogatepass")) / 4)


def fill_template(reference: str, item: RewardItem) -> str:
    """``reference`` with ``{{label}}`` / ``{{metadata.KEY}}`` replaced by the item's values."""

    def value(match: re.Match[str]) -> str:
        field = match.group(1)
        if field == "label":
            found = item.label
        else:
            key = field.removeprefix("metadata.")
            if key not in (item.metadata or {}):
                raise ValueError(f"the row has no metadata.{key} for the reference")
            found = item.metadata[key]
        if found is None:
            raise ValueError(f"the row has no {field} for the reference")
        return found if isinstance(found, str) else json.dumps(found)

    return _TEMPLATE.sub(value, reference)


# --- the graders: (entry, item, count_tokens) -> score; raising is the item's error -------------------------


def string_check(entry: StringCheckEntry, item: RewardItem, count_tokens: TokenCounter) -> float:
    text = item.completion.strip() if entry.strip else item.completion
    ref = fill_template(entry.reference, item)
    if entry.strip:
        ref = ref.strip()
    if entry.operation == "eq":
        return float(text == ref)
    if entry.operation == "ne":
        return float(text != ref)
    if entry.operation == "like":
        return float(ref in text)
    return float(ref.casefold() in text.casefold())


def regex_check(entry: RegexEntry, item: RewardItem, count_tokens: TokenCounter) -> float:
    pattern = compile_pattern(entry.pattern, entry.flags)
    try:
        match = (pattern.fullmatch if entry.full_match else pattern.search)(
            item.completion, timeout=REGEX_TIMEOUT_S
        )
    except TimeoutError:
        raise ValueError(
            f"pattern took longer than {REGEX_TIMEOUT_S:g} s on this completion "
            "(catastrophic backtracking?): simplify it"
        ) from None
    return float(match is not None)


def number_check(entry: NumberEntry, item: RewardItem, count_tokens: TokenCounter) -> float:
    expected = parse_number(fill_template(entry.reference, item))
    if expected is None:
        raise ValueError("the reference is not a number")
    found = extract_number(item.completion, entry.extract, entry.answer_prefix)
    if found is None:
        return 0.0
    return float(math.isclose(found, expected, rel_tol=entry.rel_tol, abs_tol=entry.abs_tol))


def json_check(entry: JSONEntry, item: RewardItem, count_tokens: TokenCounter) -> float:
    text = item.completion.strip()
    fenced = _FENCE.search(text)
    try:
        value = json.loads(fenced.group(1) if fenced else text)
    except ValueError:
        return 0.0
    if entry.schema_ is None:
        return 1.0
    return float(_validator(entry.schema_).is_valid(value))


def length_penalty(entry: LengthEntry, item: RewardItem, count_tokens: TokenCounter) -> float:
    n = count_tokens(item.completion)
    if entry.target is not None:
        return -min(1.0, abs(n - entry.target) / entry.target)
    assert entry.max_tokens is not None
    soft = entry.max_tokens - entry.buffer
    if n <= soft:
        return 0.0
    if n > entry.max_tokens:
        return -1.0
    return (soft - n) / entry.buffer  # DAPO (Yu et al. 2025, eq. 13): linear in the buffer


GRADERS: dict[type, Callable[[Any, RewardItem, TokenCounter], float]] = {
    StringCheckEntry: string_check,
    RegexEntry: regex_check,
    NumberEntry: number_check,
    JSONEntry: json_check,
    LengthEntry: length_penalty,
}


# --- numbers ------------------------------------------------------------------------------------------------


def parse_number(text: str) -> float | None:
    """``text`` as a finite number: thousands separators, a leading +, simple fractions (3/4), $ and %."""
    s = text.strip().strip("$").rstrip("%").strip().rstrip(".")
    if not s or len(s) > 200:
        return None
    s = s.replace(",", "").replace(" ", "")
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            value = float(Fraction(num) / Fraction(den))
        else:
            value = float(s)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def extract_number(text: str, how: str, prefix: str = "Answer:") -> float | None:
    """The final answer of ``text``: the last ``\\boxed{...}``, the rest of the last line that starts with
    ``prefix`` (case-insensitive), or the last number anywhere."""
    if how == "boxed":
        start = text.rfind("\\boxed{")
        if start < 0:
            return None
        inner = _braced(text, start + len("\\boxed{"))
        return None if inner is None else _last_number(inner)
    if how == "answer_line":
        low = prefix.casefold()
        for line in reversed(text.splitlines()):
            stripped = line.strip()
            if stripped.casefold().startswith(low):
                return _last_number(stripped[len(prefix) :])
        return None
    return _last_number(text)


def _braced(text: str, pos: int) -> str | None:
    depth = 1
    for i in range(pos, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[pos:i]
    return None


def _last_number(text: str) -> float | None:
    matches = [m.group() for m in _NUMBER_CANDIDATE.finditer(text)]
    for candidate in reversed(matches):
        value = parse_number(candidate)
        if value is not None:
            return value
    return None


# --- JSON Schema --------------------------------------------------------------------------------------------


def check_schema(schema: dict[str, Any]) -> None:
    """Raise ValueError unless ``schema`` is a valid JSON Schema this grader can run in bounded time."""
    import jsonschema

    for node in _walk(schema):
        if "patternProperties" in node:
            raise ValueError(
                "schema uses patternProperties, which the json grader does not run (its matching has no time "
                "limit): list the properties, or check key shapes with propertyNames + pattern"
            )
    try:
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise ValueError(f"schema is not a valid JSON Schema at {where}: {exc.message[:200]}") from None
    except Exception as exc:  # an unknown $schema, a value the library trips on: refused, never a 500
        raise ValueError(f"schema cannot be used: {type(exc).__name__}: {str(exc)[:200]}") from None
    for node in _walk(schema):
        if isinstance(node.get("pattern"), str):
            try:
                compile_pattern(node["pattern"])
            except Exception as exc:
                raise ValueError(f"schema has a pattern that does not compile: {str(exc)[:200]}") from None


def _walk(schema: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            out.append(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return out


def _bounded_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    from jsonschema import ValidationError

    if not validator.is_type(instance, "string"):
        return
    try:
        found = regex.search(pattern, instance, timeout=REGEX_TIMEOUT_S)
    except TimeoutError:
        raise ValueError(f"a schema pattern took longer than {REGEX_TIMEOUT_S:g} s") from None
    if found is None:
        yield ValidationError(f"{instance[:40]!r} does not match {pattern!r}")


def _validator(schema: dict[str, Any]) -> Any:
    return _validator_for(json.dumps(schema, sort_keys=True))


@functools.lru_cache(maxsize=64)
def _validator_for(schema_json: str) -> Any:
    import jsonschema

    schema = json.loads(schema_json)

    base = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    bounded = jsonschema.validators.extend(base, {"pattern": _bounded_pattern})
    return bounded(schema)


# --- the scorer of one grader entry -------------------------------------------------------------------------


class GraderScorer:
    """A ``RewardScorer`` for one grader entry: each item scored alone, its failure its own error."""

    def __init__(self, entry: Any, count_tokens: TokenCounter | None = None):
        self.entry = entry
        self.grade = GRADERS[type(entry)]
        self.count_tokens = count_tokens or approx_tokens

    def score(self, step: int, items: list[RewardItem]) -> RewardBatchResult:
        started = time.perf_counter()
        rewards: list[float | None] = []
        errors: list[str | None] = []
        for item in items:
            try:
                rewards.append(float(self.grade(self.entry, item, self.count_tokens)))
                errors.append(None)
            except Exception as exc:  # fixed code on tenant data: whatever it raises is this item's error
                message = f"{type(exc).__name__}: {exc}"[:500]
                where = f"grader {self.entry.name} ({self.entry.type})"
                setting = f"the on_error of rewards entry {self.entry.name}"
                rewards.append(resolve_item_error(self.entry.on_error, item.id, message, where, setting))
                errors.append(message)
        elapsed_ms = (time.perf_counter() - started) * 1000
        return RewardBatchResult(
            rewards=rewards,
            errors=errors,
            components=[None] * len(items),
            metrics={METRIC_GRADER_MS.format(name=self.entry.name): elapsed_ms},
        )

    def close(self) -> None:
        """Nothing to release."""
