"""Rollout: batched sampling, completion masks, and the one forward pass that scores tokens.

Shapes: B samples (prompts × group_size), P prompt columns (left-padded), T completion columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from rlcore.algorithms import entropy_from_logits, logprobs_from_logits
from rlcore.fastpath import fast_sample, fast_sampling_supported, lean_forward_supported, lean_hidden


@dataclass
class Rollout:
    input_ids: torch.Tensor  # (B, P + T) left-padded prompt, then completion (padded after EOS)
    attention_mask: torch.Tensor  # (B, P + T)
    position_ids: torch.Tensor  # (B, P + T) positions that skip left padding, as generate() used them
    response_mask: torch.Tensor  # (B, T) 1 on completion tokens up to and including the first EOS
    completions: list[str]
    prompts: list[str]
    truncated: torch.Tensor  # (B,) bool: no EOS within max_new_tokens

    @property
    def num_completion_columns(self) -> int:
        return self.response_mask.shape[1]

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.input_ids[:, -self.num_completion_columns :]


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def completion_mask(
    completion_ids: torch.Tensor, eos_token_id: int | list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) mask that ends at (and includes) the first EOS; and (B,) whether no EOS came."""
    eos_ids = torch.as_tensor(
        eos_token_id if isinstance(eos_token_id, list) else [eos_token_id], device=completion_ids.device
    )
    is_eos = torch.isin(completion_ids, eos_ids)  # (B, T)
    # Number of EOS strictly before each column; a token is kept while none came before it.
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    mask = (eos_before == 0).long()
    truncated = ~is_eos.any(dim=1)
    return mask, truncated


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int,
    max_prompt_tokens: int,
    temperature: float,
    top_p: float,
) -> Rollout:
    """Sample one completion per prompt (repeat prompts for groups) with the KV cache; ``temperature`` 0
    decodes greedily."""
    device = next(model.parameters()).device
    enc = tokenizer(
        prompts,
        return_tensors="pt",
        padding=True,
        truncation=True,
        max_length=max_prompt_tokens,
        add_special_tokens=False,
    )
    enc = {k: v.to(device) for k, v in enc.items()}
    eos = tokenizer.eos_token_id
    if fast_sampling_supported(model, top_p):
        completion_ids = fast_sample(
            model,
            enc["input_ids"],
            enc["attention_mask"],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
        )
    else:
        completion_ids = _hf_sample(model, tokenizer, enc, max_new_tokens, temperature, top_p)
    return _rollout_from(enc, completion_ids, prompts, tokenizer, max_new_tokens)


def _hf_sample(
    model, tokenizer, enc: dict, max_new_tokens: int, temperature: float, top_p: float
) -> torch.Tensor:
    """``model.generate`` for what the fast sampler does not cover (nucleus sampling, other architectures)."""
    eos = tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    # A fresh generation config: a hub model's generation_config.json (repetition penalty, top_k, …) would
    # otherwise reshape the sampling distribution away from the policy the training forward scores.
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    config = GenerationConfig(
        **(sampling if temperature > 0 else {"do_sample": False}),  # temperature 0: greedy (evaluation)
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    out = model.generate(**enc, generation_config=config)
    if was_training:
        model.train()
    return out[:, enc["input_ids"].shape[1] :]


def _rollout_from(
    enc: dict, completion_ids: torch.Tensor, prompts: list[str], tokenizer, max_new_tokens: int
) -> Rollout:
    eos = tokenizer.eos_token_id
    # Pad to max_new_tokens so every step has the same T (stable shapes; exact micro-batch arithmetic).
    missing = max_new_tokens - completion_ids.shape[1]
    if missing > 0:
        pad = completion_ids.new_full((completion_ids.shape[0], missing), tokenizer.pad_token_id)
        # generate() stops early only when every row has its EOS, so this padding always follows an EOS.
        completion_ids = torch.cat([completion_ids, pad], dim=1)
    resp_mask, truncated = completion_mask(completion_ids, eos)
    input_ids = torch.cat([enc["input_ids"], completion_ids], dim=1)
    attention_mask = torch.cat([enc["attention_mask"], resp_mask.to(enc["attention_mask"].dtype)], dim=1)
    lengths = resp_mask.sum(dim=1).tolist()
    texts = [
        tokenizer.decode(row[:n], skip_special_tokens=True)
        for row, n in zip(completion_ids, lengths, strict=True)
    ]
    return Rollout(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions_from_mask(attention_mask),
        response_mask=resp_mask,
        completions=texts,
        prompts=list(prompts),
        truncated=truncated,
    )


def completion_logits(
    model, input_ids, attention_mask, position_ids, num_completion: int, with_hidden: bool = False
):
    """Logits that predict the completion tokens only: (B, T, V). The prompt's logits are never computed.

    With ``with_hidden``, ``(logits, hidden)``: also the final hidden states (B, T, H) at the same positions,
    the states s_t a value head on the policy's backbone scores (PPO's shared critic)."""
    keep = num_completion + 1
    if lean_forward_supported(model, input_ids):
        hidden = lean_hidden(model, input_ids, attention_mask, position_ids, keep)
        logits = torch.nn.functional.linear(hidden, model.lm_head.weight, model.lm_head.bias)[:, :-1]
        return (logits, hidden[:, :-1]) if with_hidden else logits
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=keep,
        use_cache=False,
        output_hidden_states=with_hidden,
    )
    if with_hidden:
        return out.logits[:, :-1], out.hidden_states[-1][:, -keep:-1]
    return out.logits[:, :-1]


@dataclass
class PolicyOutputs:
    """One forward of the policy over a rollout's completion columns: all (B, T) except ``hidden``."""

    logprobs: torch.Tensor  # log π(o_t | q, o_<t), float32, differentiable
    entropy: torch.Tensor | None = None  # differentiable only when asked (entropy bonus)
    hidden: torch.Tensor | None = None  # (B, T, H) final hidden states, for a shared critic


def policy_outputs(
    model,
    input_ids,
    attention_mask,
    position_ids,
    num_completion: int,
    temperature: float,
    chunk_size: int,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    with_hidden: bool = False,
) -> PolicyOutputs:
    """Log-probs of the sampled tokens, and on request their entropy and the hidden states, in one forward."""
    out = completion_logits(model, input_ids, attention_mask, position_ids, num_completion, with_hidden)
    logits, hidden = out if with_hidden else (out, None)
    if temperature != 1.0:
        logits = logits / temperature
    labels = input_ids[:, -num_completion:]
    logprobs = logprobs_from_logits(logits, labels, chunk_size=chunk_size)
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            src = logits if entropy_grad else logits.detach()
            entropy = entropy_from_logits(src, chunk_size=chunk_size)
    return PolicyOutputs(logprobs, entropy, hidden)
