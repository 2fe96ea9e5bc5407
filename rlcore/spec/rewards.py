"""Rewards in the spec: one HTTP endpoint (``reward``) or a weighted list of endpoints and graders
(``rewards``), and how their header values are stored apart from the spec."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    StringConstraints,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from rlcore.spec.base import (
    _HEADER_VALUE,
    _TOKEN,
    MAX_HEADER_NAME,
    MAX_HEADER_VALUE,
    MAX_HEADERS,
    MAX_STR_LENGTH,
    _Frozen,
)


class RewardSpec(_Frozen):
    model_config = ConfigDict(str_max_length=MAX_HEADER_VALUE)  # header values (a JWT) may exceed 4,096

    url: str | None = Field(
        None,
        max_length=MAX_STR_LENGTH,
        description="The reward endpoint (POST). Required by the service; a local run may pass a callable.",
    )
    protocol: Literal["rlft.reward.v1", "openrlhf"] = Field(
        "rlft.reward.v1", description="Wire format: this project's batched protocol, or OpenRLHF's remote RM."
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Headers sent with every request (e.g. Authorization). Write-only: never returned.",
        json_schema_extra={"writeOnly": True},
    )
    timeout_s: float = Field(30.0, gt=0, le=3600, description="Timeout of one HTTP request.")
    max_retries: int = Field(4, ge=0, le=20, description="Retries on connection errors, timeouts, 429, 5xx.")
    batch_size: int = Field(64, ge=1, le=4096, description="Items per request.")
    max_concurrency: int = Field(8, ge=1, le=256, description="Requests in flight at once.")
    on_error: Literal["fail", "skip_sample", "zero"] = Field(
        "fail", description="What a per-item error does: fail the job, drop the sample, or score it 0."
    )

    @field_validator("headers", mode="before")
    @classmethod
    def _header_shape(cls, headers: Any) -> Any:
        # An HTTP library refusing a header quotes its value in the exception, and that message travels
        # to events and logs: refuse it here, naming the header, never its value. Before type validation,
        # so that no generic message (or pydantic's echo of the input) comes first.
        if not isinstance(headers, dict):
            return headers
        if len(headers) > MAX_HEADERS:
            raise ValueError(f"reward.headers has {len(headers)} headers; at most {MAX_HEADERS}")
        seen: set[str] = set()
        for name, secret in headers.items():
            if not isinstance(name, str) or len(name) > MAX_HEADER_NAME or not _TOKEN.fullmatch(name):
                raise ValueError(
                    "a reward.headers name is not an HTTP token: use letters, digits and !#$%&'*+-.^_`|~ "
                    f"(at most {MAX_HEADER_NAME} characters, no spaces or colons)"
                )
            if name.lower() in seen:
                raise ValueError(f"reward.headers names {name} twice (header names ignore case)")
            seen.add(name.lower())
            value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
            if not isinstance(value, str):
                raise ValueError(f"the value of reward header {name} must be a string")
            if len(value) > MAX_HEADER_VALUE:
                raise ValueError(f"the value of reward header {name} is longer than {MAX_HEADER_VALUE}")
            if not _HEADER_VALUE.fullmatch(value):
                raise ValueError(
                    f"the value of reward header {name} must be visible ASCII, with spaces or tabs only "
                    "between other characters (no leading/trailing whitespace, CR, LF, NUL or non-ASCII)"
                )
        return headers

    @field_validator("url")
    @classmethod
    def _url_shape(cls, v: str | None) -> str | None:
        if v is not None and not (v.startswith("http://") or v.startswith("https://")):
            raise ValueError("reward.url must start with http:// or https://")
        return v

    def header_values(self) -> dict[str, str]:
        return {k: v.get_secret_value() for k, v in self.headers.items()}


# --- Several rewards with weights: HTTP endpoints and built-in graders. Graders are fixed Python
# in the engine (rlcore.rewards.graders); a spec only parameterises them, so no tenant code ever runs.
MAX_REWARDS = 16
REWARD_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # becomes the metric reward/<name>/mean
MAX_PATTERN_LENGTH = 1024
MAX_REFERENCE_LENGTH = 65536
REGEX_FLAGS = ("ignorecase", "multiline", "dotall")
_TEMPLATE = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_TEMPLATE_FIELD = re.compile(r"^(?:label|metadata\.[A-Za-z0-9_.:/-]{1,64})$")
_RewardName = Annotated[str, StringConstraints(pattern=REWARD_NAME_PATTERN)]


def check_template(reference: str) -> str:
    """Raise ValueError unless every ``{{...}}`` in ``reference`` is ``{{label}}`` or ``{{metadata.KEY}}``."""
    for field in _TEMPLATE.findall(reference):
        if not _TEMPLATE_FIELD.fullmatch(field):
            raise ValueError(
                f"reference uses {{{{{field[:40]}}}}}; "
                "the templates are {{label}} and {{metadata.KEY}}"
            )
    return reference


class _Entry(_Frozen):
    name: _RewardName = Field(
        description="Unique within rewards; the component's name in samples and metrics (reward/<name>/mean)."
    )
    weight: float = Field(1.0, ge=0, le=1e6, description="The total reward is the sum of weight x component.")
    on_error: Literal["fail", "skip_sample", "zero"] = Field(
        "fail", description="What a per-item error does: fail the job, drop the sample, or score it 0."
    )
    truncated_score: float | None = Field(
        None,
        ge=-1e6,
        le=1e6,
        description="The value of this component for a completion cut at max_new_tokens (finish_reason "
        "'length'), whatever it holds: e.g. 0 so that a right answer counts only in a reply that stopped.",
    )


class HTTPRewardEntry(RewardSpec, _Entry):
    """An HTTP endpoint, with every field of the single ``reward``."""

    type: Literal["http"]

    @model_validator(mode="after")
    def _url_given(self) -> HTTPRewardEntry:
        if self.url is None:
            raise ValueError("an http reward needs a url (the endpoint that scores completions)")
        return self


class StringCheckEntry(_Entry):
    """OpenAI's string_check: 1.0 when the completion passes ``operation`` against ``reference``, else 0.0.

    ``eq``/``ne`` compare whole strings, ``like`` tests that the completion contains the reference,
    ``ilike`` the same ignoring case."""

    type: Literal["string_check"]
    operation: Literal["eq", "ne", "like", "ilike"] = Field(description="eq, ne, like (contains), ilike.")
    reference: str = Field(
        "{{label}}",
        max_length=MAX_REFERENCE_LENGTH,
        description="A literal, or templates {{label}} / {{metadata.KEY}} filled from the dataset row.",
    )
    strip: bool = Field(True, description="Compare the completion without surrounding whitespace.")

    @field_validator("reference")
    @classmethod
    def _check_reference(cls, v: str) -> str:
        return check_template(v)


class RegexEntry(_Entry):
    """1.0 when ``pattern`` matches the completion (anywhere, or the whole of it with ``full_match``)."""

    type: Literal["regex"]
    pattern: str = Field(min_length=1, max_length=MAX_PATTERN_LENGTH, description="The regular expression.")
    full_match: bool = Field(False, description="Match the whole completion instead of searching in it.")
    flags: list[Literal["ignorecase", "multiline", "dotall"]] = Field(
        default_factory=list, max_length=3, description="Any of ignorecase, multiline, dotall."
    )

    @model_validator(mode="after")
    def _compiles(self) -> RegexEntry:
        from rlcore.rewards.graders import compile_pattern

        try:
            compile_pattern(self.pattern, self.flags)
        except Exception as exc:  # the regex library's error types differ by version
            raise ValueError(f"pattern is not a valid regular expression: {str(exc)[:200]}") from None
        return self


class NumberEntry(_Entry):
    """1.0 when the final number of the completion equals the reference within ``rel_tol``/``abs_tol``."""

    type: Literal["number"]
    extract: Literal["boxed", "answer_line", "last_number"] = Field(
        "last_number",
        description="boxed: the last \\boxed{...}; answer_line: after answer_prefix; last_number.",
    )
    answer_prefix: str = Field("Answer:", min_length=1, max_length=64, description="For extract=answer_line.")
    reference: str = Field(
        "{{label}}", max_length=MAX_REFERENCE_LENGTH, description="The expected number, or a template."
    )
    rel_tol: float = Field(0.0, ge=0, le=1, description="Relative tolerance (math.isclose).")
    abs_tol: float = Field(1e-6, ge=0, description="Absolute tolerance (math.isclose).")

    @field_validator("reference")
    @classmethod
    def _check_reference(cls, v: str) -> str:
        return check_template(v)


class JSONEntry(_Entry):
    """1.0 when the completion (or its fenced code block) parses as JSON and, with ``schema``, validates."""

    type: Literal["json"]
    schema_: dict[str, Any] | None = Field(
        None, alias="schema", description="A JSON Schema the parsed value must satisfy."
    )

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None:
            from rlcore.rewards.graders import check_schema

            check_schema(schema)
        return schema


class LengthEntry(_Entry):
    """A length penalty in tokens (<= 0): DAPO's soft overlong penalty, or a linear one around a target.

    ``max_tokens`` with ``buffer``: 0 up to max_tokens - buffer, then falling linearly to -1 at max_tokens
    (and -1 beyond). ``target``: -|length - target| / target, at least -1."""

    type: Literal["length"]
    max_tokens: int | None = Field(None, ge=1, le=1_000_000, description="The length cap of the penalty.")
    buffer: int = Field(0, ge=0, le=1_000_000, description="DAPO's soft-penalty interval before max_tokens.")
    target: int | None = Field(None, ge=1, le=1_000_000, description="Or: the length to aim at.")

    @model_validator(mode="after")
    def _one_mode(self) -> LengthEntry:
        if (self.max_tokens is None) == (self.target is None):
            raise ValueError("give exactly one of max_tokens (with buffer) or target")
        if self.max_tokens is not None and self.buffer >= self.max_tokens:
            raise ValueError(f"buffer ({self.buffer}) must be smaller than max_tokens ({self.max_tokens})")
        if self.target is not None and self.buffer:
            raise ValueError("buffer goes with max_tokens, not target")
        return self


def check_reward_list(rewards: list[Any] | None, info: ValidationInfo) -> list[Any] | None:
    """The ``rewards`` field's rule, wherever it sits beside a ``reward``: one of the two, unique names."""
    if rewards is None:
        return rewards
    if info.data.get("reward") is not None:
        raise ValueError("give either reward (one endpoint) or rewards (a list), not both")
    names = [e.name for e in rewards]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"names {', '.join(dupes)} more than once: each reward name must be unique")
    return rewards


def _entry_type(value: Any) -> Any:
    return value.get("type") if isinstance(value, dict) else getattr(value, "type", None)


# A callable discriminator: the spec's before-validator on every field rules out pydantic's field-based one.
RewardEntry = Annotated[
    Annotated[HTTPRewardEntry, Tag("http")]
    | Annotated[StringCheckEntry, Tag("string_check")]
    | Annotated[RegexEntry, Tag("regex")]
    | Annotated[NumberEntry, Tag("number")]
    | Annotated[JSONEntry, Tag("json")]
    | Annotated[LengthEntry, Tag("length")],
    Discriminator(
        _entry_type,
        custom_error_type="reward_type",
        custom_error_message="type must be one of http, string_check, regex, number, json, length",
    ),
]


def http_rewards(
    reward: RewardSpec | None, rewards: list[RewardEntry] | None
) -> list[tuple[str, RewardSpec]]:
    """The HTTP endpoints of a ``reward`` / ``rewards`` pair (a job, a dry run) with their field paths."""
    if rewards is None:
        return [("reward", reward)] if reward is not None else []
    return [(f"rewards[{i}]", e) for i, e in enumerate(rewards) if isinstance(e, HTTPRewardEntry)]


def header_secrets(reward: RewardSpec | None, rewards: list[RewardEntry] | None) -> dict[str, Any]:
    """Header values in their stored shape: ``{name: value}`` for one ``reward``, ``{entry: {name: value}}``
    for a ``rewards`` list (see ``apply_header_secrets``)."""
    if rewards is None:
        return reward.header_values() if reward is not None else {}
    return {e.name: e.header_values() for e in rewards if isinstance(e, HTTPRewardEntry) and e.headers}


def _http_dicts(spec: dict[str, Any]) -> list[dict[str, Any]]:
    if isinstance(spec.get("rewards"), list):
        return [e for e in spec["rewards"] if isinstance(e, dict) and e.get("type") == "http"]
    return [spec["reward"]] if isinstance(spec.get("reward"), dict) else []


def apply_header_secrets(spec: dict[str, Any], secrets: dict[str, Any] | None) -> dict[str, Any]:
    """``spec`` (a dict) with the reward header values of ``secrets`` put back in place.

    The one definition of how a job's header values are stored apart from its spec (the service's
    encrypted column, the worker's ``RLFT_REWARD_HEADERS``): for a single ``reward`` a flat
    ``{header: value}`` dict (the shape rows had before ``rewards`` existed); for ``rewards`` a dict of
    entry name to such a dict, entries without headers left out. A flat dict's values are strings, the
    other's are objects, so an old row reads as it always did.
    """
    spec = dict(spec)
    secrets = secrets or {}
    if isinstance(spec.get("rewards"), list):
        spec["rewards"] = [
            {**e, "headers": dict(secrets.get(e.get("name")) or {})}
            if isinstance(e, dict) and e.get("type") == "http"
            else e
            for e in spec["rewards"]
        ]
    elif isinstance(spec.get("reward"), dict):
        flat = {k: v for k, v in secrets.items() if isinstance(v, str)}
        spec["reward"] = {**spec["reward"], "headers": flat}
    return spec


def split_header_secrets(spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``spec`` without its header values (names kept, values empty) and the values in stored shape."""
    secrets: dict[str, Any] = {}
    if isinstance(spec.get("rewards"), list):
        for e in _http_dicts(spec):
            if e.get("headers"):
                secrets[str(e.get("name"))] = {str(k): str(v) for k, v in e["headers"].items()}
    elif isinstance(spec.get("reward"), dict) and spec["reward"].get("headers"):
        secrets = {str(k): str(v) for k, v in spec["reward"]["headers"].items()}
    return apply_header_secrets(spec, {}), secrets


def secret_values(secrets: dict[str, Any] | None) -> list[str]:
    """Every header value in ``secrets`` (either stored shape), for a scrubber."""
    out: list[str] = []
    for v in (secrets or {}).values():
        if isinstance(v, dict):
            out += [str(x) for x in v.values()]
        else:
            out.append(str(v))
    return out
