"""Built-in graders: a table of cases per type (matches, near misses, unicode, empty, huge), their bounds,
and the spec's refusals of bad entries."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from rlcore.errors import RewardInvalid
from rlcore.rewards.base import RewardItem
from rlcore.rewards.graders import (
    REGEX_TIMEOUT_S,
    GraderScorer,
    approx_tokens,
    extract_number,
    parse_number,
)
from rlcore.spec import JobSpec, RewardEntry

ENTRY = TypeAdapter(RewardEntry)
HUGE = "x" * 1_000_000


def grade(entry: dict, completion: str, label=None, metadata=None, count_tokens=None) -> float | None:
    scorer = GraderScorer(ENTRY.validate_python({"name": "g", **entry}), count_tokens)
    item = RewardItem(
        id="1-0-0", prompt="p", completion=completion, group=0, label=label, metadata=metadata or {}
    )
    return scorer.score(1, [item]).rewards[0]


STRING_CASES = [
    # operation, reference, completion, label, expected
    ("eq", "{{label}}", "Paris", "Paris", 1.0),
    ("eq", "{{label}}", "  Paris\n", "Paris", 1.0),  # surrounding whitespace is stripped
    ("eq", "{{label}}", "paris", "Paris", 0.0),  # near miss: case
    ("eq", "{{label}}", "Paris.", "Paris", 0.0),  # near miss: punctuation
    ("ne", "{{label}}", "Lyon", "Paris", 1.0),
    ("ne", "{{label}}", "Paris", "Paris", 0.0),
    ("like", "{{label}}", "I think it is Paris, France", "Paris", 1.0),
    ("like", "{{label}}", "I think it is PARIS", "Paris", 0.0),
    ("ilike", "{{label}}", "I think it is PARIS", "Paris", 1.0),
    ("ilike", "straße", "STRASSE", None, 1.0),  # unicode case folding
    ("eq", "日本", "日本", None, 1.0),
    ("eq", "{{label}}", "", "a", 0.0),  # empty completion
    ("like", "", "", None, 1.0),  # the empty reference is in every string
    ("like", "needle", HUGE + "needle", None, 1.0),  # huge completion
    ("eq", "{{label}}", "42", 42, 1.0),  # a non-string label compares as its JSON text
    ("eq", "{{metadata.city}}", "Rome", None, 1.0),
]


@pytest.mark.parametrize("operation,reference,completion,label,expected", STRING_CASES)
def test_string_check(operation, reference, completion, label, expected):
    entry = {"type": "string_check", "operation": operation, "reference": reference}
    assert grade(entry, completion, label=label, metadata={"city": "Rome"}) == expected


REGEX_CASES = [
    # pattern, full_match, flags, completion, expected
    (r"\d+", False, [], "it is 42", 1.0),
    (r"\d+", True, [], "it is 42", 0.0),
    (r"\d+", True, [], "42", 1.0),
    (r"^answer:", False, [], "reasoning\nanswer: 3", 0.0),  # near miss: ^ is the start without multiline
    (r"^answer:", False, ["multiline"], "reasoning\nanswer: 3", 1.0),
    (r"ANSWER", False, ["ignorecase"], "answer", 1.0),
    (r"a.b", False, [], "a\nb", 0.0),
    (r"a.b", False, ["dotall"], "a\nb", 1.0),
    (r"\p{Han}+", False, [], "答案是 日本", 1.0),  # unicode classes
    (r"^$", True, [], "", 1.0),  # empty completion
    (r"x+", False, [], "", 0.0),
    (r"needle$", False, [], HUGE + "needle", 1.0),  # huge completion
]


@pytest.mark.parametrize("pattern,full_match,flags,completion,expected", REGEX_CASES)
def test_regex(pattern, full_match, flags, completion, expected):
    entry = {"type": "regex", "pattern": pattern, "full_match": full_match, "flags": flags}
    assert grade(entry, completion) == expected


def test_a_catastrophic_regex_stops_at_its_limit_and_is_the_items_error():
    entry = {"type": "regex", "pattern": r"(a|aa)+$", "on_error": "zero"}
    scorer = GraderScorer(ENTRY.validate_python({"name": "fmt", **entry}))
    items = [
        RewardItem(id="1-0-0", prompt="p", completion="a" * 5000 + "!", group=0),
        RewardItem(id="1-0-1", prompt="p", completion="aaa", group=0),
    ]
    result = scorer.score(1, items)
    # The pathological item ends with a time-limit error scored 0; the next item is graded as usual.
    assert result.rewards == [0.0, 1.0]
    assert result.errors[0] is not None and f"longer than {REGEX_TIMEOUT_S:g} s" in result.errors[0]
    assert result.errors[1] is None
    with pytest.raises(RewardInvalid, match="grader fmt"):
        GraderScorer(ENTRY.validate_python({"name": "fmt", **entry, "on_error": "fail"})).score(1, items[:1])


NUMBER_CASES = [
    # extract, completion, label, extra, expected
    ("last_number", "so the total is 1,234", "1234", {}, 1.0),
    ("last_number", "so the total is +7", "7", {}, 1.0),
    ("last_number", "half: 1/2", "0.5", {}, 1.0),
    ("last_number", "3 apples then 4", "3", {}, 0.0),  # near miss: not the last number
    ("last_number", "it costs $12.50.", "12.5", {}, 1.0),
    ("last_number", "about 3.14159", "3.1416", {"abs_tol": 1e-3}, 1.0),
    ("last_number", "about 3.2", "3.1416", {"abs_tol": 1e-3}, 0.0),
    ("last_number", "1000001", "1000000", {"rel_tol": 1e-5}, 1.0),
    ("last_number", "-5", "5", {}, 0.0),  # sign matters
    ("last_number", "", "5", {}, 0.0),  # empty completion
    ("last_number", "no numbers here", "5", {}, 0.0),
    ("last_number", "答案是 ４２ or 42", "42", {}, 1.0),  # unicode around it
    ("last_number", HUGE + " 9", "9", {}, 1.0),  # huge completion
    ("boxed", r"first \boxed{3} then \boxed{\frac{1}{2}} finally \boxed{12}", "12", {}, 1.0),
    ("boxed", r"the answer is \boxed{1,000}", 1000, {}, 1.0),  # a numeric label
    ("boxed", "the answer is 12", "12", {}, 0.0),  # no box
    ("answer_line", "work: 5 + 7\nAnswer: 12\nbye 99", "12", {}, 1.0),
    ("answer_line", "answer: 12", "12", {}, 1.0),  # the prefix ignores case
    ("answer_line", "12", "12", {}, 0.0),  # no answer line
    ("answer_line", "Final => 3/4", "0.75", {"answer_prefix": "Final =>"}, 1.0),
]


@pytest.mark.parametrize("extract,completion,label,extra,expected", NUMBER_CASES)
def test_number(extract, completion, label, extra, expected):
    entry = {"type": "number", "extract": extract, **extra}
    assert grade(entry, completion, label=label) == expected


@pytest.mark.parametrize(
    "text,value",
    [
        ("1,234.5", 1234.5),
        ("+3", 3.0),
        ("-2/4", -0.5),
        ("1e3", 1000.0),
        ("50%", 50.0),
        ("x", None),
        ("1/0", None),
    ],
)
def test_parse_number(text, value):
    assert parse_number(text) == value


def test_extract_number_of_nested_braces():
    assert extract_number(r"\boxed{2^{10}}", "boxed") == 10.0  # the last number inside the box


def test_a_reference_that_is_not_a_number_is_the_items_error():
    entry = {"type": "number", "on_error": "skip_sample"}
    scorer = GraderScorer(ENTRY.validate_python({"name": "num", **entry}))
    result = scorer.score(1, [RewardItem(id="1", prompt="p", completion="5", group=0, label="five")])
    assert result.rewards == [None]
    assert "not a number" in result.errors[0]


SCHEMA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "pattern": "^[A-Z]"}},
}
JSON_CASES = [
    # schema, completion, expected
    (None, '{"a": 1}', 1.0),
    (None, "[1, 2]", 1.0),
    (None, "{'a': 1}", 0.0),  # near miss: Python, not JSON
    (None, '{"a": 1', 0.0),
    (None, 'Here you go:\n```json\n{"a": 1}\n```\nanything else?', 1.0),  # a fenced block
    (SCHEMA, '{"name": "Ada"}', 1.0),
    (SCHEMA, '{"name": "ada"}', 0.0),  # near miss: pattern
    (SCHEMA, '{"nom": "Ada"}', 0.0),
    (SCHEMA, '{"name": "Ωmega"}', 0.0),
    (SCHEMA, '{"name": "Émile"}', 0.0),  # unicode: É is no [A-Z]
    (SCHEMA, '{"name": "Zoë 日本"}', 1.0),
    (None, "", 0.0),  # empty completion
    (None, '"' + HUGE + '"', 1.0),  # huge completion
]


@pytest.mark.parametrize("schema,completion,expected", JSON_CASES)
def test_json(schema, completion, expected):
    entry = {"type": "json"} if schema is None else {"type": "json", "schema": schema}
    assert grade(entry, completion) == expected


def test_a_catastrophic_schema_pattern_is_bounded_too():
    schema = {"type": "string", "pattern": "(a|aa)+$"}
    entry = {"type": "json", "schema": schema, "on_error": "zero"}
    scorer = GraderScorer(ENTRY.validate_python({"name": "js", **entry}))
    result = scorer.score(1, [RewardItem(id="1", prompt="p", completion='"' + "a" * 5000 + '!"', group=0)])
    assert result.rewards == [0.0]
    assert "schema pattern took longer" in result.errors[0]


LENGTH_CASES = [
    # entry, completion tokens, expected
    ({"max_tokens": 100, "buffer": 20}, 50, 0.0),
    ({"max_tokens": 100, "buffer": 20}, 80, 0.0),  # the edge of the soft interval
    ({"max_tokens": 100, "buffer": 20}, 90, -0.5),  # halfway into the buffer
    ({"max_tokens": 100, "buffer": 20}, 100, -1.0),
    ({"max_tokens": 100, "buffer": 20}, 150, -1.0),
    ({"max_tokens": 100}, 100, 0.0),  # no buffer: a hard cap
    ({"max_tokens": 100}, 101, -1.0),
    ({"target": 50}, 50, 0.0),
    ({"target": 50}, 25, -0.5),
    ({"target": 50}, 75, -0.5),
    ({"target": 50}, 500, -1.0),
    ({"target": 50}, 0, -1.0),  # empty completion
]


@pytest.mark.parametrize("entry,tokens,expected", LENGTH_CASES)
def test_length(entry, tokens, expected):
    # One token per character here; training counts the job's tokenizer's tokens.
    assert grade({"type": "length", **entry}, "x" * tokens, count_tokens=len) == pytest.approx(expected)


def test_length_counts_approximate_tokens_without_a_tokenizer():
    assert approx_tokens("abcd" * 10) == 10
    assert approx_tokens("é") == 1  # 2 bytes
    assert grade({"type": "length", "target": 10}, "abcd" * 10) == 0.0


BASE = {"model": {"name_or_path": "m"}, "dataset": {"rows": [{"prompt": "p", "label": "a"}]}}
BAD = [
    # rewards (or the spec's extra keys), the error's location, words of the message
    ([{"type": "bleu", "name": "a"}], ("rewards", 0), "type must be one of"),
    ([{"name": "a"}], ("rewards", 0), "type must be one of"),
    (
        [{"type": "regex", "name": "a", "pattern": "(("}],
        ("rewards", 0, "regex"),
        "not a valid regular expression",
    ),
    (
        [{"type": "regex", "name": "a", "pattern": "x", "flags": ["verbose"]}],
        ("rewards", 0, "regex", "flags", 0),
        "",
    ),
    (
        [{"type": "json", "name": "a", "schema": {"type": "wat"}}],
        ("rewards", 0, "json", "schema"),
        "not a valid JSON",
    ),
    (
        [{"type": "json", "name": "a", "schema": {"patternProperties": {"^a": {}}}}],
        ("rewards", 0, "json", "schema"),
        "patternProperties",
    ),
    (
        [{"type": "length", "name": "a", "max_tokens": 5, "weight": -1}],
        ("rewards", 0, "length", "weight"),
        "or equal to 0",
    ),
    (
        [{"type": "length", "name": "a", "max_tokens": 5, "weight": float("nan")}],
        ("rewards", 0, "length", "weight"),
        "finite",
    ),
    ([{"type": "length", "name": "a", "max_tokens": 5, "buffer": 5}], ("rewards", 0, "length"), "buffer"),
    ([{"type": "length", "name": "a"}], ("rewards", 0, "length"), "exactly one of max_tokens"),
    (
        [{"type": "string_check", "name": "a", "operation": "eq", "reference": "{{item.answer}}"}],
        ("rewards", 0, "string_check", "reference"),
        "templates are {{label}}",
    ),
    (
        [{"type": "string_check", "name": "a", "operation": "regex"}],
        ("rewards", 0, "string_check", "operation"),
        "",
    ),
    ([{"type": "http", "name": "a"}], ("rewards", 0, "http"), "needs a url"),
    (
        [{"type": "string_check", "name": "bad name!", "operation": "eq"}],
        ("rewards", 0, "string_check", "name"),
        "",
    ),
    (
        [{"type": "length", "name": "a", "max_tokens": 5}, {"type": "length", "name": "a", "target": 5}],
        ("rewards",),
        "each reward name must be unique",
    ),
    ([], ("rewards",), "at least 1 item"),
    # Compiling itself must be bounded: the engine unrolls counted repetitions.
    (
        [{"type": "regex", "name": "a", "pattern": "a{1000000000}"}],
        ("rewards", 0, "regex"),
        "limited to 1000",
    ),
    (
        [{"type": "regex", "name": "a", "pattern": "(a{1000}){1000}"}],
        ("rewards", 0, "regex"),
        "multiply past",
    ),
    (
        [{"type": "json", "name": "a", "schema": {"pattern": "a{99999999}"}}],
        ("rewards", 0, "json", "schema"),
        "limited to 1000",
    ),
    (
        [{"type": "json", "name": "a", "schema": {"$schema": 5}}],
        ("rewards", 0, "json", "schema"),
        "cannot be used",
    ),
]


@pytest.mark.parametrize("rewards,loc,words", BAD)
def test_bad_entries_are_refused_naming_the_field(rewards, loc, words):
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate({**BASE, "rewards": rewards})
    error = info.value.errors()[0]
    assert error["loc"] == loc
    assert words in error["msg"]


def test_reward_and_rewards_together_are_refused():
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(
            {**BASE, "reward": {"url": "http://x"}, "rewards": [{"type": "length", "name": "a", "target": 5}]}
        )
    assert info.value.errors()[0]["loc"] == ("rewards",)
    assert "not both" in info.value.errors()[0]["msg"]
