"""PPO's critic V(s_t): a value head on a backbone, in three variants chosen by ``value_model``.

- ``separate``, full weights: its own backbone (``AutoModel``) and head, trained with its own gradients, as
  in TRL's and OpenRLHF's PPO. A second backbone, its gradients and its optimizer state: PPO's extra memory.
- ``separate`` with LoRA: the critic's own LoRA adapters and head on the policy's frozen base weights (the
  same tensors, not a copy), so the critic adds only adapters, a head and their optimizer state.
- ``shared``: a head on the policy's own backbone, fed the hidden states of the policy's forward (one
  backbone, one forward; CleanRL's shared actor-critic). The value loss trains the backbone too, scaled by
  ``vf_coef``; during critic warm-up only the head learns, so the policy does not move.

The head starts at exactly zero (weight and bias), as the value head of OpenAI's lm-human-preferences that
"The N Implementation Details of RLHF with PPO" (Huang et al. 2024, arXiv:2403.17031) documents: V = 0 at
the start, so the first advantages are the (normalised) returns themselves instead of a random critic's
noise.

Checkpoints hold ``value_model/``: the backbone directory (full weights) or the adapter (LoRA), and
``value_head.safetensors``; a shared critic's holds only the head.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from rlcore.errors import ModelLoadError
from rlcore.spec import Algorithm, JobSpec

VALUE_HEAD_FILE = "value_head.safetensors"
SHARED, SEPARATE = "shared", "separate"


class ValueHead(nn.Module):
    """hidden (B, T, H) → values (B, T), float32. Zero-initialised: V ≡ 0 until it learns."""

    def __init__(self, hidden_size: int, dtype: torch.dtype):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1, dtype=dtype)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1).float()

    def save(self, path: Path, state_dict: dict | None = None) -> None:
        """``state_dict``: the head's gathered tensors (``linear.weight``, ``linear.bias``) when sharded."""
        from safetensors.torch import save_file

        path.mkdir(parents=True, exist_ok=True)
        tensors = state_dict or {f"linear.{k}": v for k, v in self.linear.state_dict().items()}
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path / VALUE_HEAD_FILE))

    def load(self, path: Path) -> None:
        from safetensors.torch import load_file

        self.load_state_dict(load_file(str(path / VALUE_HEAD_FILE)))


class SeparateCritic(nn.Module):
    """Its own backbone (full, or LoRA adapters over frozen weights) and a head."""

    def __init__(self, backbone: nn.Module, head: ValueHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, input_ids, attention_mask, position_ids, num_completion: int) -> torch.Tensor:
        """V(s_t) for the state before each completion token: the hidden state at the previous position.
        ``(B, P + T)`` inputs → ``(B, T)`` float32."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        return self.head(out.last_hidden_state[:, -num_completion - 1 : -1])

    def save(self, path: Path, state_dict: dict | None = None) -> None:
        """``state_dict``: the critic's gathered state dict when it is sharded (FSDP)."""
        parts = _split(state_dict, ("backbone", "head"))
        self.backbone.save_pretrained(path, safe_serialization=True, state_dict=parts["backbone"])
        self.head.save(path, parts["head"])


class SharedCritic(nn.Module):
    """A head only, scoring the policy's hidden states (``rollout.policy_outputs(with_hidden=True)``)."""

    def __init__(self, head: ValueHead):
        super().__init__()
        self.head = head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)

    def save(self, path: Path, state_dict: dict | None = None) -> None:
        self.head.save(path, _split(state_dict, ("head",))["head"])


def _split(state_dict: dict | None, prefixes: tuple[str, ...]) -> dict[str, dict | None]:
    """A module's state dict by child: ``{"head": {"linear.weight": ...}, ...}`` (None for None)."""
    if state_dict is None:
        return dict.fromkeys(prefixes)
    return {p: {k[len(p) + 1 :]: v for k, v in state_dict.items() if k.startswith(p + ".")} for p in prefixes}


def _backbone_on_policy_weights(policy: nn.Module) -> nn.Module:
    """A bare ``AutoModel`` whose parameters and buffers are the LoRA policy's frozen base tensors."""
    from transformers import AutoModel

    base_lm = policy.get_base_model()
    decoder = base_lm.get_decoder()
    with torch.device("meta"):
        backbone = AutoModel.from_config(base_lm.config, dtype=next(decoder.parameters()).dtype)
    tensors = {n.replace(".base_layer", ""): p for n, p in decoder.named_parameters() if "lora_" not in n}
    buffers = dict(decoder.named_buffers())
    for name, _ in list(backbone.named_parameters()):
        owner, _, attr = name.rpartition(".")
        backbone.get_submodule(owner)._parameters[attr] = tensors[name]
    for name, _ in list(backbone.named_buffers()):
        owner, _, attr = name.rpartition(".")
        backbone.get_submodule(owner)._buffers[attr] = buffers[name]
    return backbone


def _load_backbone(name_or_path: str, revision: str | None, dtype: torch.dtype) -> nn.Module:
    from transformers import AutoModel

    try:
        return AutoModel.from_pretrained(name_or_path, revision=revision, dtype=dtype)
    except Exception as e:  # transformers raises OSError, ValueError, HFValidationError, …
        raise ModelLoadError(f"could not load the value model backbone {name_or_path!r}: {e}") from e


def _lora_backbone(spec: JobSpec, policy: nn.Module, dtype: torch.dtype, resume_dir: Path | None):
    from peft import LoraConfig, PeftModel, get_peft_model

    model = spec.model
    if model.value_name_or_path:  # another model's weights: frozen, adapters on top
        base = _load_backbone(model.value_name_or_path, None, dtype).requires_grad_(False)
    else:
        base = _backbone_on_policy_weights(policy)
    if resume_dir is not None:
        return PeftModel.from_pretrained(base, str(resume_dir / "value_model"), is_trainable=True)
    lora = model.lora
    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules
    )
    return get_peft_model(base, config)


def load_critic(spec: JobSpec, policy: nn.Module, dtype: torch.dtype, resume_dir: Path | None):
    """PPO's critic for ``spec`` (None for GRPO), from ``resume_dir/value_model`` when resuming."""
    if spec.algorithm is not Algorithm.PPO:
        return None
    hidden_size = policy.config.hidden_size
    saved = resume_dir / "value_model" if resume_dir is not None else None
    if spec.hyperparameters.value_model == SHARED:
        critic: nn.Module = SharedCritic(ValueHead(hidden_size, dtype))
    elif spec.model.lora is not None:
        backbone = _lora_backbone(spec, policy, dtype, resume_dir)
        critic = SeparateCritic(backbone, ValueHead(hidden_size, dtype))
    else:
        source = str(saved) if saved else (spec.model.value_name_or_path or spec.model.name_or_path)
        if source == spec.model.name_or_path and spec.model.gguf_file:
            # a GGUF file holds a causal LM: the value backbone is a copy of the freshly loaded policy's
            backbone = copy.deepcopy(policy.base_model).to(dtype)
        else:
            backbone = _load_backbone(source, None, dtype)
        critic = SeparateCritic(backbone, ValueHead(hidden_size, dtype))
        if saved is None and (Path(source) / VALUE_HEAD_FILE).exists():
            saved = Path(source)  # a trained critic (an earlier checkpoint's value_model/) keeps its head
    if saved is not None:
        critic.head.load(saved)
    return critic


def policy_and_values(
    policy: nn.Module,
    critic: nn.Module | None,
    rollout,
    rows: torch.Tensor | slice,
    *,
    shared: bool,
    temperature: float,
    chunk_size: int,
    logprobs: bool = True,
    entropy: bool = False,
    entropy_grad: bool = False,
    policy_grad: bool = True,
):
    """One micro-batch ``rows`` of ``rollout`` through the policy and the critic: ``(PolicyOutputs | None,
    values (B, T) | None)``. A shared critic reads the policy's hidden states (one forward); a separate
    one runs its own. ``logprobs=False`` skips the policy unless the critic needs its states;
    ``policy_grad=False`` keeps the policy's weights out of the graph (critic warm-up)."""
    from rlcore.rollout import policy_outputs

    r, T = rollout, rollout.num_completion_columns
    inputs = (r.input_ids[rows], r.attention_mask[rows], r.position_ids[rows])
    out = None
    if logprobs or (critic is not None and shared):
        with torch.set_grad_enabled(policy_grad and torch.is_grad_enabled()):
            out = policy_outputs(
                policy, *inputs, T, temperature, chunk_size, entropy, entropy_grad, with_hidden=shared
            )
    if critic is None:
        return out, None
    values = critic(out.hidden.detach() if not policy_grad else out.hidden) if shared else critic(*inputs, T)
    return (out if logprobs else None), values


@torch.no_grad()
def value_metrics(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """``value/mean`` and ``value/explained_variance`` (1 - Var[R - V] / Var[R]) of a rollout, all (B, T)."""
    mask = mask.bool()
    v, ret = values[mask], returns[mask]
    var_ret = ret.var().item() if ret.numel() > 1 else 0.0
    return {
        "value/mean": v.mean().item() if v.numel() else 0.0,
        "value/explained_variance": (1.0 - (ret - v).var().item() / var_ret) if var_ret > 0 else 0.0,
    }
