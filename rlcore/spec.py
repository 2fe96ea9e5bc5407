"""The job spec: one pydantic model, defined once.

The engine consumes it, the service validates submitted jobs with it, the worker starts the engine with it.
Every field is documented where it is declared; validation messages say what to change. The spec is frozen:
nothing mutates it at run time. Defaults that depend on the algorithm (``kl_in``, ``kl_estimator``) are
resolved once, at validation.
"""

from __future__ import annotations

import enum
import functools
import math
import os
import re
import typing
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
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
MAX_SPEC_FILE_BYTES = 16 * 1024 * 1024
MAX_YAML_ALIASES = 100
MAX_YAML_NODES = 1_000_000  # after aliases are expanded: a 10,000-row inline dataset is ~50,000

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


_ModuleNames = Annotated[
    list[Annotated[str, StringConstraints(min_length=1, max_length=200)]],
    Field(min_length=1, max_length=MAX_TARGET_MODULES),
]


class LoraSpec(_Frozen):
    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA branch.")
    target_modules: _ModuleNames | Literal["all-linear"] = Field(
        "all-linear", description=f"Module names to adapt (at most {MAX_TARGET_MODULES}), or 'all-linear'."
    )


class ModelSpec(_Frozen):
    """Where the policy comes from: exactly one of ``name_or_path`` or ``checkpoint``.

    A local run (``rlft train --local``) may name any hub id or local directory. The service accepts hub
    ids, the tenant's own checkpoints, and directories under the operator's ``RLFT_MODEL_ROOTS``
    (``rlcore.modelpolicy``).
    """

    name_or_path: str | None = Field(
        None, min_length=1, description="A hub id (name or org/name) or a local Hugging Face directory."
    )
    checkpoint: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="Service only: continue from one of your checkpoints (its id, ckpt_…).",
    )
    revision: str | None = Field(
        None, max_length=MAX_REVISION_LENGTH, description="Hub revision (branch, tag or commit)."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype; 'auto' is bfloat16 on a GPU that supports it, else float32."
    )
    lora: LoraSpec | None = Field(None, description="Train LoRA adapters instead of all weights.")
    value_name_or_path: str | None = Field(
        None, description="PPO only: where to initialise the value model from (default: the policy)."
    )
    merge_lora_on_save: bool = Field(False, description="With LoRA, also save a merged model at the end.")
    gguf_file: str | None = Field(
        None,
        min_length=1,
        max_length=255,
        description="A GGUF file (llama.cpp, Ollama) inside name_or_path, by file name: loaded dequantised.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.name_or_path is None) == (self.checkpoint is None):
            raise ValueError(
                "give exactly one of model.name_or_path (a hub id or a directory) "
                "or model.checkpoint (the id of one of your checkpoints)"
            )
        if self.gguf_file is not None:
            if self.name_or_path is None:
                raise ValueError(
                    "model.gguf_file names a file inside model.name_or_path: give that directory"
                )
            if any(c in self.gguf_file for c in "/\\\0") or self.gguf_file in (".", ".."):
                raise ValueError(
                    "model.gguf_file must be a file name inside model.name_or_path, without a directory "
                    "(for example model.gguf)"
                )
        return self


# Hugging Face's repo-id shape (huggingface_hub's validate_repo_id): "name" or "org/name", ASCII letters,
# digits, '-', '_', '.', neither end a '-' or '.', no '--' or '..', at most 96 characters a part.
_HUB_PART = r"(?![.-])(?!.*--)(?!.*\.\.)[A-Za-z0-9_.-]{1,96}(?<![.-])"
_HUB_ID = re.compile(rf"{_HUB_PART}(?:/{_HUB_PART})?", re.ASCII)


def is_hub_id(value: str) -> bool:
    """True when ``value`` has the shape of a Hugging Face hub id (never a path: no '/' prefix, '~', '..')."""
    return bool(_HUB_ID.fullmatch(value)) and not value.endswith(".git")


class DatasetSpec(_Frozen):
    """Exactly one of ``rows``, ``file_id`` or ``path``.

    A row is ``{"prompt": str, "label": any, "metadata": {...}}`` or ``{"messages": [...]}`` (rendered with
    the tokenizer's chat template).
    """

    _walked_elsewhere = frozenset({"rows"})  # validate_row walks each row

    rows: list[dict[str, Any]] | None = Field(
        None, description="Inline rows (the service takes at most 10,000; larger datasets go in a file)."
    )
    file_id: str | None = Field(
        None, max_length=64, description="A JSONL file uploaded through POST /v1/files."
    )
    path: str | None = Field(
        None, description="A local JSONL file (local runs and workers with shared disk)."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> DatasetSpec:
        given = [k for k in ("rows", "file_id", "path") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of dataset.rows, dataset.file_id or dataset.path"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.rows is not None:
            if not self.rows:
                raise ValueError("dataset.rows is empty: give at least one row")
            for i, row in enumerate(self.rows):
                validate_row(row, where=f"dataset.rows[{i}]")
        return self


def validate_row(row: Any, where: str) -> None:
    """Raise ValueError with the row's location unless it is a usable dataset row.

    Inline rows, uploaded lines and local files all pass here: text without NUL or lone surrogates,
    finite numbers, bounded nesting (see :func:`check_json_value`).
    """
    if not isinstance(row, dict):
        raise ValueError(f"{where} must be an object with a 'prompt' or 'messages' field")
    check_json_value(row, where)
    if "prompt" in row:
        if not isinstance(row["prompt"], str) or not row["prompt"]:
            raise ValueError(f"{where}.prompt must be a non-empty string")
    elif "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise ValueError(f"{where}.messages must be a non-empty list of {{role, content}} objects")
        for j, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
                raise ValueError(f"{where}.messages[{j}] must be an object with 'role' and 'content'")
    else:
        raise ValueError(f"{where} needs a 'prompt' (string) or 'messages' (chat list) field")
    if "metadata" in row and not isinstance(row["metadata"], dict):
        raise ValueError(f"{where}.metadata must be an object")


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


# --- Several rewards with weights (issue 11): HTTP endpoints and built-in graders. Graders are fixed Python
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


class Hyperparameters(_Frozen):
    steps: int = Field(100, ge=1, le=1_000_000, description="Rollout/update steps to run.")
    prompts_per_step: int = Field(4, ge=1, le=65536, description="Prompts sampled per step.")
    group_size: int = Field(
        8, ge=1, le=1024, description="Completions per prompt (GRPO needs >= 2; PPO usually 1)."
    )
    max_new_tokens: int = Field(64, ge=1, le=65536, description="Completion length cap.")
    max_prompt_tokens: int = Field(512, ge=1, le=131072, description="Prompts are left-truncated to this.")
    temperature: float = Field(1.0, gt=0, le=10, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling.")
    learning_rate: float = Field(1e-6, gt=0, le=1, description="Peak learning rate of the policy (AdamW).")
    value_learning_rate: float | None = Field(
        None, gt=0, le=1, description="PPO: learning rate of the value model (default: learning_rate)."
    )
    weight_decay: float = Field(0.0, ge=0, le=1)
    lr_schedule: Literal["constant", "linear", "cosine"] = Field("constant")
    warmup_steps: int = Field(0, ge=0, le=1_000_000, description="Linear warmup, in optimizer steps.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping (None: off).")
    epochs_per_rollout: int | None = Field(
        None,
        ge=1,
        le=100,
        description=(
            "Passes over each rollout batch. Default: ppo 4 (CleanRL, TRL's PPO: old log-probs are taken "
            "before the first pass, so later passes move the ratio off 1 and clipping acts), grpo 1 (single "
            "pass, as DeepSeekMath and TRL's GRPO)."
        ),
    )
    minibatch_size: int | None = Field(
        None,
        ge=1,
        le=2**26,
        description=(
            "Samples per optimizer step (default: the whole rollout batch, TRL's num_mini_batches=1: with "
            "ppo's 4 epochs, 4 optimizer steps per rollout; 4 minibatches, as CleanRL, collapsed more often "
            "on small batches, see BENCHMARKS.md)."
        ),
    )
    micro_batch_size: int | None = Field(
        None,
        ge=1,
        le=2**26,
        description="Samples per forward/backward (gradient accumulation); default: minibatch.",
    )
    clip_low: float = Field(0.2, gt=0, lt=1, description="Ratio clip below 1 (epsilon).")
    clip_high: float = Field(0.2, gt=0, le=10, description="Ratio clip above 1 (clip-higher: e.g. 0.28).")
    kl_coef: float = Field(0.0, ge=0, description="KL-to-reference coefficient; 0 loads no reference model.")
    kl_estimator: Literal["k1", "k2", "k3"] | None = Field(
        None, description="KL estimator; default k1 in the reward, k3 in the loss."
    )
    kl_in: Literal["reward", "loss"] | None = Field(
        None, description="Where KL acts: PPO default 'reward' (per-token penalty), GRPO 'loss'."
    )
    kl_target: float | None = Field(
        None, gt=0, description="With kl_in='reward': adaptive KL controller target (None: fixed kl_coef)."
    )
    kl_horizon: int = Field(10000, ge=1, le=10**9, description="Adaptive KL controller horizon.")
    gamma: float = Field(1.0, ge=0, le=1, description="PPO discount.")
    lam: float = Field(0.95, ge=0, le=1, description="PPO GAE lambda.")
    vf_coef: float = Field(0.1, ge=0, description="PPO value loss coefficient.")
    value_clip: float | None = Field(
        0.2,
        gt=0,
        description=(
            "PPO value clipping range, in units of the (normalised) reward (None: off). It acts from the "
            "second minibatch of a rollout on, once the critic has moved away from the rollout's values."
        ),
    )
    whiten_advantages: bool | None = Field(
        None,
        description=(
            "PPO: whiten advantages over the batch. Default: on when reward_norm is 'none', off otherwise: "
            "normalised rewards already give advantages unit scale, and whitening a batch whose rewards "
            "barely differ (a task not found yet, or one solved) blows the critic's noise up to unit size."
        ),
    )
    scale_rewards: Literal["group", "batch", "none"] = Field("group", description="GRPO advantage scaling.")
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = Field("token_mean")
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Seeds sampling, initialisation and data order (< 2**31)."
    )
    checkpoint_every: int = Field(
        50, ge=0, le=1_000_000, description="Checkpoint every N steps (0: only at the end)."
    )
    keep_checkpoints: int = Field(3, ge=1, le=1000, description="Checkpoints kept on disk (newest).")
    logprob_chunk_size: int = Field(
        1024,
        ge=1,
        le=2**20,
        description="Tokens per chunk in the memory-light log-softmax over the vocabulary.",
    )
    samples_per_step: int = Field(16, ge=0, le=4096, description="Per-sample records reported each step.")
    # PPO robustness (issue 12)
    reward_norm: Literal["none", "batch", "running"] | None = Field(
        None,
        description=(
            "PPO: scale sequence rewards before GAE to (r - mean) / std, with the statistics of this batch "
            "('batch') or of every batch so far ('running', kept in the checkpoint; OpenRLHF's "
            "normalize_reward). Default: ppo 'running', so the critic's targets have unit scale whatever "
            "the reward's; grpo 'none' (its advantages are scaled per group, see scale_rewards)."
        ),
    )
    critic_warmup_steps: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description=(
            "PPO: the first N steps update the critic only (the policy does not move), so that its values "
            "fit the returns before they shape advantages (OpenRLHF's freezing_actor_steps)."
        ),
    )
    entropy_coef: float = Field(
        0.0,
        ge=0,
        le=1,
        description=(
            "Entropy bonus: the loss subtracts entropy_coef x the mean token entropy (CleanRL's ent_coef). "
            "0 keeps the entropy a metric only."
        ),
    )
    value_model: Literal["separate", "shared"] | None = Field(
        None,
        description=(
            "PPO's critic: 'separate' (its own backbone, or with LoRA its own adapters on the policy's "
            "frozen base weights, plus a head) or 'shared' (a head on the policy's backbone: one backbone, "
            "one forward: none of a second backbone's memory). Default for ppo: 'separate'."
        ),
    )


class ResourcesSpec(_Frozen):
    gpus: int = Field(
        1,
        ge=0,
        le=64,
        description="GPUs for this job; >1 runs one rank per GPU under `accelerate launch` "
        "(the service caps it with RLFT_MAX_GPUS_PER_JOB).",
    )
    queue: str | None = Field(None, description="Celery queue (default: 'gpu', or 'cpu' when gpus is 0).")

    @field_validator("queue")
    @classmethod
    def _queue_name(cls, queue: str | None) -> str | None:
        if queue is not None and not re.fullmatch(QUEUE_PATTERN, queue):
            raise ValueError(
                "resources.queue is a queue name: 1-100 letters, digits, '_', '.', ':' or '-', "
                "starting with a letter or digit"
            )
        return queue


_MetadataKey = Annotated[str, StringConstraints(pattern=METADATA_KEY_PATTERN)]
_MetadataValue = Annotated[str, StringConstraints(max_length=MAX_METADATA_VALUE)]


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


class JobSpec(_Frozen):
    algorithm: Algorithm = Field(Algorithm.GRPO, strict=False, description="grpo or ppo.")
    model: ModelSpec
    dataset: DatasetSpec
    reward: RewardSpec | None = Field(
        None, description="One HTTP endpoint (the default when rewards is not given)."
    )
    rewards: list[RewardEntry] | None = Field(
        None,
        min_length=1,
        max_length=MAX_REWARDS,
        description="Instead of reward: weighted HTTP endpoints and built-in graders, summed.",
    )
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    metadata: dict[_MetadataKey, _MetadataValue] = Field(
        default_factory=dict,
        max_length=MAX_METADATA_KEYS,
        description=f"Free key/values, filterable (at most {MAX_METADATA_KEYS} keys).",
    )

    @model_validator(mode="before")
    @classmethod
    def _resolve_algorithm_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if data.get("rewards") is None and data.get("reward") is None:
            data = {**data, "reward": {}}
        algo = str(data.get("algorithm", "grpo"))
        hp = data.get("hyperparameters")
        if hp is None:
            hp = {}
        if isinstance(hp, dict):
            hp = dict(hp)
            if hp.get("kl_in") is None:
                hp["kl_in"] = "reward" if algo == "ppo" else "loss"
            if hp.get("kl_estimator") is None:
                hp["kl_estimator"] = "k1" if hp["kl_in"] == "reward" else "k3"
            if algo == "ppo" and "group_size" not in hp:
                hp["group_size"] = 1
            # What makes PPO PPO (several passes over each rollout, scaled rewards, a critic); GRPO keeps
            # its single pass. The fields' descriptions give the sources and measurements.
            ppo = algo == "ppo"
            if hp.get("epochs_per_rollout") is None:
                hp["epochs_per_rollout"] = 4 if ppo else 1
            if hp.get("reward_norm") is None:
                hp["reward_norm"] = "running" if ppo else "none"
            if ppo and hp.get("value_model") is None:
                hp["value_model"] = "separate"
            if hp.get("whiten_advantages") is None:
                hp["whiten_advantages"] = hp["reward_norm"] == "none"
            data = {**data, "hyperparameters": hp}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        hp = self.hyperparameters
        if self.algorithm is not Algorithm.PPO:
            for name, off in (("reward_norm", "none"), ("value_model", None), ("critic_warmup_steps", 0)):
                if getattr(hp, name) != off:
                    raise ValueError(
                        f"hyperparameters.{name} is used by ppo only: remove it "
                        "(grpo scales rewards per group, see scale_rewards, and has no critic)"
                    )
        if hp.value_model == "shared" and self.model.value_name_or_path:
            raise ValueError(
                "model.value_name_or_path needs hyperparameters.value_model='separate' "
                "(a shared critic is a head on the policy's backbone)"
            )
        if hp.minibatch_size and hp.minibatch_size > self.rollout_batch_size:
            raise ValueError(
                f"hyperparameters.minibatch_size ({hp.minibatch_size}) is larger than the rollout "
                f"(prompts_per_step * group_size = {self.rollout_batch_size}): lower it"
            )
        if self.algorithm is Algorithm.GRPO and hp.group_size < 2:
            raise ValueError(
                "hyperparameters.group_size must be at least 2 for grpo "
                "(advantages compare samples of a group)"
            )
        batch = hp.prompts_per_step * hp.group_size
        mb = hp.minibatch_size or batch
        if batch % mb:
            raise ValueError(
                f"hyperparameters.prompts_per_step * group_size ({batch}) "
                f"must divide by minibatch_size ({mb})"
            )
        if hp.micro_batch_size and mb % hp.micro_batch_size:
            raise ValueError(
                f"hyperparameters.minibatch_size ({mb}) "
                f"must divide by micro_batch_size ({hp.micro_batch_size})"
            )
        if hp.kl_target is not None and hp.kl_in != "reward":
            raise ValueError("hyperparameters.kl_target (adaptive KL) needs kl_in='reward'")
        if hp.kl_target is not None and hp.kl_coef == 0:
            raise ValueError("hyperparameters.kl_target needs a starting kl_coef > 0")
        if self.model.value_name_or_path and self.algorithm is not Algorithm.PPO:
            raise ValueError("model.value_name_or_path is only used by ppo")
        return self

    @field_validator("rewards")
    @classmethod
    def _one_reward_form(cls, rewards: list[Any] | None, info: ValidationInfo) -> list[Any] | None:
        return check_reward_list(rewards, info)

    @property
    def rollout_batch_size(self) -> int:
        return self.hyperparameters.prompts_per_step * self.hyperparameters.group_size

    def queue(self, gpu_queue: str = "gpu") -> str:
        """The Celery queue: `resources.queue`, else `gpu_queue` (the service default), or cpu at 0 GPUs."""
        if self.resources.queue:
            return self.resources.queue
        return gpu_queue if self.resources.gpus > 0 else "cpu"

    def http_rewards(self) -> list[tuple[str, RewardSpec]]:
        """Every HTTP endpoint of the job with the field path that names it (``reward``, ``rewards[1]``)."""
        return http_rewards(self.reward, self.rewards)

    def header_secrets(self) -> dict[str, Any]:
        """The reward header values in their stored shape (see ``apply_header_secrets``)."""
        return header_secrets(self.reward, self.rewards)

    def public_dict(self) -> dict[str, Any]:
        """The spec as a client may see it: reward header values are replaced by their names only."""
        d = self._dump()
        for entry in _http_dicts(d):
            entry["headers"] = {k: "********" for k in entry.get("headers") or {}}
        return d

    def secret_dict(self) -> dict[str, Any]:
        """The full spec with header values in clear (for encryption at rest and for the worker)."""
        return apply_header_secrets(self._dump(), self.header_secrets())

    def _dump(self) -> dict[str, Any]:
        # The unused one of reward/rewards is left out, so that a stored spec validates again as it was.
        d = self.model_dump(mode="json", by_alias=True)
        d.pop("rewards" if self.rewards is None else "reward")
        return d


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


class SpecFileError(ValueError):
    """A spec file cannot be read as a spec; the message says what is wrong and what to do."""


def load_spec_data(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML or JSON spec file into a dict, refusing what would exhaust memory.

    The one loader of spec files (CLI, client, local runs, demo). A file above ``MAX_SPEC_FILE_BYTES``, more
    than ``MAX_YAML_ALIASES`` aliases or more than ``MAX_YAML_NODES`` nodes once aliases are expanded (a
    "billion laughs" file is a few hundred bytes), recursive aliases and runaway nesting are refused
    before any Python object is built.
    """
    try:
        size = os.path.getsize(path)
        if size > MAX_SPEC_FILE_BYTES:
            raise SpecFileError(
                f"{path} is {size} bytes; spec files are limited to {MAX_SPEC_FILE_BYTES}: "
                "put the dataset in a JSONL file (rlft submit --file DATA.jsonl)"
            )
        with open(path, encoding="utf-8") as f:
            loader = _BoundedLoader(f)
            try:
                node = loader.get_single_node()
                if node is None:
                    data = None
                else:
                    _check_expanded_size(node, str(path))
                    data = loader.construct_document(node)
            finally:
                loader.dispose()
    except FileNotFoundError:
        raise SpecFileError(f"no such spec file: {path}") from None
    except UnicodeDecodeError:
        raise SpecFileError(f"{path} is not UTF-8 text") from None
    except RecursionError:
        raise SpecFileError(f"{path} nests too deeply to be a job spec") from None
    except yaml.YAMLError as e:
        raise SpecFileError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SpecFileError(f"{path}: a job spec is a mapping with 'model', 'dataset', ... at the top level")
    return data


def load_spec(path: str) -> JobSpec:
    """Read and validate a YAML or JSON spec file."""
    return JobSpec.model_validate(load_spec_data(path))


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts aliases and reads 1e-6 as a number (YAML 1.2), not as a string."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self.aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_YAML_ALIASES:
                raise SpecFileError(
                    f"the spec uses more than {MAX_YAML_ALIASES} YAML aliases (*name): write the values out"
                )
        return super().compose_node(parent, index)


# PyYAML follows YAML 1.1, where a float needs a dot: `learning_rate: 1e-6` would be the string "1e-6",
# which a strictly typed spec refuses. Resolve YAML 1.2 exponent floats as floats.
_BoundedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _check_expanded_size(root: Any, path: str) -> None:
    """Count the nodes the document has once every alias is expanded; refuse cycles and huge totals."""
    sizes: dict[int, int] = {}
    active: set[int] = set()
    # Iterative post-order walk: (node, children pushed?)
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        key = id(node)
        if not isinstance(node, yaml.CollectionNode):
            sizes[key] = 1
            continue
        children = (
            [x for pair in node.value for x in pair] if isinstance(node, yaml.MappingNode) else node.value
        )
        if expanded:
            active.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > MAX_YAML_NODES:
                raise SpecFileError(
                    f"{path} expands to more than {MAX_YAML_NODES} values (YAML aliases): write it without "
                    "aliases, or put the dataset in a JSONL file"
                )
            continue
        if key in sizes:
            continue
        if key in active:
            raise SpecFileError(f"{path} has a YAML alias that contains itself")
        active.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
