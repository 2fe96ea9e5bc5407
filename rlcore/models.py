"""Loading the policy, the reference and the value model through the ordinary Hugging Face paths."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from rlcore.critic import load_critic
from rlcore.errors import ConfigError, ModelLoadError
from rlcore.gguf import load_gguf_causal_lm
from rlcore.spec import JobSpec, ModelSpec


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


def _require_source(spec: ModelSpec) -> str:
    if spec.name_or_path is None:
        raise ConfigError(
            f"model.checkpoint {spec.checkpoint!r} names a checkpoint of the service, which only a worker "
            "can fetch; for a local run, download it (`rlft download JOB -o DIR`) and give "
            "model.name_or_path: DIR"
        )
    return spec.name_or_path


def load_tokenizer(spec: ModelSpec):
    from transformers import AutoTokenizer

    _require_source(spec)

    extra = {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
    try:
        tok = AutoTokenizer.from_pretrained(spec.name_or_path, revision=spec.revision, **extra)
    except Exception as e:  # transformers raises OSError, ValueError, HFValidationError, …
        raise ModelLoadError(f"could not load the tokenizer of {spec.name_or_path!r}: {e}") from e
    tok.padding_side = "left"  # decoder-only generation needs the prompt flush against the completion
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise ModelLoadError(f"the tokenizer of {spec.name_or_path!r} has neither a pad nor an EOS token")
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(
    name_or_path: str, revision: str | None, dtype: torch.dtype, gguf_file: str | None = None
) -> nn.Module:
    from transformers import AutoModelForCausalLM

    if gguf_file:
        return load_gguf_causal_lm(name_or_path, gguf_file, revision, dtype)
    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path, revision=revision, dtype=dtype)
    except Exception as e:
        raise ModelLoadError(f"could not load the model {name_or_path!r}: {e}") from e


def apply_lora(model: nn.Module, spec: ModelSpec) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = spec.lora
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


class Reference:
    """The frozen reference policy π_ref: a second copy, or, with LoRA, the same model with adapters off."""

    def __init__(self, model: nn.Module | None, policy_with_lora: nn.Module | None = None):
        self.model = model
        self.policy_with_lora = policy_with_lora

    @contextlib.contextmanager
    def active(self):
        if self.policy_with_lora is not None:
            with self.policy_with_lora.disable_adapter():
                yield self.policy_with_lora
        else:
            yield self.model


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_models(spec: JobSpec, device: torch.device, mixed_bf16: bool, resume_dir: Path | None):
    """The policy (with LoRA when asked), the reference (None when ``kl_coef == 0``) and PPO's critic
    (``rlcore.critic``), from ``resume_dir`` when resuming. Weights load in float32 for ``dtype="auto"``
    (mixed precision trains in bf16 on a GPU through accelerate); the frozen reference may stay in bf16."""
    model = spec.model
    dtype = torch.float32 if model.dtype == "auto" else resolve_dtype(model.dtype, device)
    if resume_dir is not None and model.lora is None:
        policy = load_causal_lm(str(resume_dir / "model"), None, dtype)
    else:
        policy = load_causal_lm(model.name_or_path, model.revision, dtype, model.gguf_file)
    if model.lora is not None:
        if resume_dir is not None:
            from peft import PeftModel

            policy = PeftModel.from_pretrained(policy, str(resume_dir / "model"), is_trainable=True)
        else:
            policy = apply_lora(policy, model)
    reference = None
    if spec.hyperparameters.kl_coef > 0:
        if model.lora is not None:
            reference = Reference(None, policy_with_lora=policy)
        else:
            ref_dtype = torch.bfloat16 if mixed_bf16 else dtype
            reference = Reference(
                freeze(load_causal_lm(model.name_or_path, model.revision, ref_dtype, model.gguf_file)).to(
                    device
                )
            )
    return policy, reference, load_critic(spec, policy, dtype, resume_dir)
