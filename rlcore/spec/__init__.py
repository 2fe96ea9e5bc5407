"""The job spec: one pydantic model, defined once.

The engine consumes it, the service validates submitted jobs with it, the worker starts the engine with it.
Every field is documented where it is declared; validation messages say what to change. The spec is frozen:
nothing mutates it at run time. Defaults that depend on the algorithm (``kl_in``, ``kl_estimator``) are
resolved once, at validation.

The parts live in submodules (``base``: limits, value checks and the frozen base model; ``model``;
``dataset``; ``rewards``; ``hyperparameters``; ``evaluation``: held-out evaluation, checkpoint choice and
early stopping; ``job``: ``JobSpec``; ``files``: spec files); everything public is importable from here.
"""

from rlcore.spec.base import (
    MAX_HEADER_NAME,
    MAX_HEADER_VALUE,
    MAX_HEADERS,
    MAX_JSON_DEPTH,
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE,
    MAX_REVISION_LENGTH,
    MAX_SEED,
    MAX_STR_LENGTH,
    MAX_TARGET_MODULES,
    METADATA_KEY_PATTERN,
    QUEUE_PATTERN,
    Algorithm,
    check_json_value,
    check_text,
)
from rlcore.spec.dataset import (
    DatasetSpec,
    validate_row,
)
from rlcore.spec.evaluation import (
    CheckpointPolicy,
    EarlyStopSpec,
    EvaluationSpec,
)
from rlcore.spec.files import (
    MAX_SPEC_FILE_BYTES,
    MAX_YAML_ALIASES,
    MAX_YAML_NODES,
    SpecFileError,
    load_spec,
    load_spec_data,
)
from rlcore.spec.hyperparameters import (
    Hyperparameters,
    ResourcesSpec,
)
from rlcore.spec.job import JobSpec
from rlcore.spec.model import (
    LoraSpec,
    ModelSpec,
    is_hub_id,
)
from rlcore.spec.rewards import (
    MAX_PATTERN_LENGTH,
    MAX_REFERENCE_LENGTH,
    MAX_REWARDS,
    REGEX_FLAGS,
    REWARD_NAME_PATTERN,
    HTTPRewardEntry,
    JSONEntry,
    LengthEntry,
    NumberEntry,
    RegexEntry,
    RewardEntry,
    RewardSpec,
    StringCheckEntry,
    apply_header_secrets,
    check_reward_list,
    check_template,
    header_secrets,
    http_rewards,
    secret_values,
    split_header_secrets,
)

__all__ = [
    "Algorithm",
    "CheckpointPolicy",
    "DatasetSpec",
    "EarlyStopSpec",
    "EvaluationSpec",
    "HTTPRewardEntry",
    "Hyperparameters",
    "JSONEntry",
    "JobSpec",
    "LengthEntry",
    "LoraSpec",
    "MAX_HEADERS",
    "MAX_HEADER_NAME",
    "MAX_HEADER_VALUE",
    "MAX_JSON_DEPTH",
    "MAX_METADATA_KEYS",
    "MAX_METADATA_VALUE",
    "MAX_PATTERN_LENGTH",
    "MAX_REFERENCE_LENGTH",
    "MAX_REVISION_LENGTH",
    "MAX_REWARDS",
    "MAX_SEED",
    "MAX_SPEC_FILE_BYTES",
    "MAX_STR_LENGTH",
    "MAX_TARGET_MODULES",
    "MAX_YAML_ALIASES",
    "MAX_YAML_NODES",
    "METADATA_KEY_PATTERN",
    "ModelSpec",
    "NumberEntry",
    "QUEUE_PATTERN",
    "REGEX_FLAGS",
    "REWARD_NAME_PATTERN",
    "RegexEntry",
    "ResourcesSpec",
    "RewardEntry",
    "RewardSpec",
    "SpecFileError",
    "StringCheckEntry",
    "apply_header_secrets",
    "check_json_value",
    "check_reward_list",
    "check_template",
    "check_text",
    "header_secrets",
    "http_rewards",
    "is_hub_id",
    "load_spec",
    "load_spec_data",
    "secret_values",
    "split_header_secrets",
    "validate_row",
]
