"""Where the policy comes from: ``model`` (a hub id, a local directory, or one of the tenant's
checkpoints)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    Field,
    StringConstraints,
    model_validator,
)

from rlcore.spec.base import (
    MAX_REVISION_LENGTH,
    MAX_TARGET_MODULES,
    _Frozen,
)

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
