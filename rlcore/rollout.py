"""Rollout: batched sampling, completion masks, and the one forward pass that scores tokens.

Shapes: B samples (prompts × group_size), P prompt columns (left-padded), T completion columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlcore.algorithms import entropy_from_logits, logprobs_from_logits


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


def completion_mask(completion_ids: torch.Tensor, eos_token_id: int | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) mask that ends at (and includes) the first EOS; and (B,) whether no EOS came."""
    eos_ids = torch.as_tensor(eos_token_id if isinstance(eos_token_id, list) else [eos_token_id],
                              device=completion_ids.device)
    is_eos = torch.isin(completion_ids, eos_ids)  # (B, T)
    # Number of EOS strictly before each column; a token is kept while none came before it.
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    mask = (eos_before == 0).long()
    truncated = ~is_eos.any(dim=1)
    return mask, truncated


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int, max_prompt_tokens: int,
             temperature: float, top_p: float) -> Rollout:
    """Sample one completion per prompt (repeat prompts for groups) with the KV cache."""
    device = next(model.parameters()).device
    enc = tokenizer(prompts, return_tensors="pt", padding=True, truncation=True, max_length=max_prompt_tokens,
                    add_special_tokens=False)
    enc = {k: v.to(device) for k, v in enc.items()}
    eos = tokenizer.eos_token_id
    if fast_sampling_supported(model, top_p):
        completion_ids = fast_sample(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=max_new_tokens,
                                     temperature=temperature, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    else:
        completion_ids = _hf_sample(model, tokenizer, enc, max_new_tokens, temperature, top_p)
    return _rollout_from(enc, completion_ids, prompts, tokenizer, max_new_tokens)


# ---- the fast sampler --------------------------------------------------------------------------------------
# Profile (py-spy, tiny and small models, 16 x 32 tokens on 2 CPU cores): ``model.generate`` took ~78 % of a
# GRPO step, almost all of it per-token Python in the Hugging Face modules (mask building, cache objects,
# kwargs plumbing, rotary recomputation), not arithmetic. For the decoder-only architectures below the same
# arithmetic is done here on the model's own weights: one preallocated KV cache, rotary tables computed once
# by the model's own rotary module, one boolean key mask, and sampling from softmax(logits / temperature) of
# the full vocabulary, which is the distribution the training forward scores.

_FAST_ARCHS = {"qwen2", "llama"}


def fast_sampling_supported(model, top_p: float) -> bool:
    """Plain (no adapters) Qwen2/Llama models with full-distribution sampling; others use ``generate()``."""
    cfg = getattr(model, "config", None)
    if top_p < 1.0 or cfg is None or getattr(cfg, "model_type", None) not in _FAST_ARCHS:
        return False
    if getattr(cfg, "use_sliding_window", False) or not hasattr(model, "model") or not hasattr(model, "lm_head"):
        return False
    inner = model.model
    if type(model).__name__ not in ("Qwen2ForCausalLM", "LlamaForCausalLM") or not hasattr(inner, "rotary_emb"):
        return False  # PEFT wrappers and subclasses may change the forward: use the reference path
    return getattr(cfg, "hidden_act", "silu") == "silu" and not getattr(cfg, "mlp_bias", False)


def _rms_norm(x: torch.Tensor, norm) -> torch.Tensor:
    if x.dtype == torch.float32 and norm.weight.dtype == torch.float32:  # one fused op, same arithmetic
        return torch.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon)
    # As the HF RMSNorm: normalise in float32, cast back, then scale.
    y = torch.rms_norm(x.float(), (x.shape[-1],), None, norm.variance_epsilon)
    return norm.weight * y.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _cat_or_none(tensors: list) -> torch.Tensor | None:
    return None if any(t is None for t in tensors) else torch.cat(tensors)


class _Layer:
    """One decoder layer's weights, with q/k/v and gate/up concatenated: 4 matrix products per token, not 7."""

    def __init__(self, layer):
        attn, mlp = layer.self_attn, layer.mlp
        self.w_qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        self.b_qkv = _cat_or_none([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
        self.w_o, self.b_o = attn.o_proj.weight, attn.o_proj.bias
        self.w_gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
        self.w_down = mlp.down_proj.weight
        self.norm1, self.norm2, self.scaling = layer.input_layernorm, layer.post_attention_layernorm, attn.scaling


class _KVDecoder:
    """The model's decoder layers over a fixed-size KV cache ``(B, kv_heads, P + T, head_dim)`` per layer."""

    def __init__(self, model, batch: int, length: int, positions: torch.Tensor):
        cfg = model.config
        self.model, self.n_heads, self.n_kv = model, cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.layers = [_Layer(layer) for layer in model.model.layers]
        emb = model.model.embed_tokens.weight
        shape = (batch, self.n_kv, length, self.head_dim)
        self.cache = [(emb.new_empty(shape), emb.new_empty(shape)) for _ in self.layers]
        cos, sin = model.model.rotary_emb(emb[:1], positions)  # (B, P + T, head_dim), computed once
        self.cos, self.sin = cos.unsqueeze(2), sin.unsqueeze(2)  # broadcast over heads: (B, P + T, 1, hd)

    def forward(self, ids: torch.Tensor, start: int, key_mask: torch.Tensor) -> torch.Tensor:
        """Hidden states of the last position for tokens ``ids`` (B, S) at cache columns ``start:start+S``;
        ``key_mask`` (B, 1, S, start + S) says which cached keys each query sees."""
        linear, silu = torch.nn.functional.linear, torch.nn.functional.silu
        x = self.model.model.embed_tokens(ids)
        end = start + ids.shape[1]
        cos, sin = self.cos[:, start:end], self.sin[:, start:end]
        for w, (k_cache, v_cache) in zip(self.layers, self.cache):
            x = x + linear(self._attention(w, _rms_norm(x, w.norm1), cos, sin, k_cache, v_cache, start, end,
                                           key_mask), w.w_o, w.b_o)
            gate, up = linear(_rms_norm(x, w.norm2), w.w_gate_up).chunk(2, dim=-1)
            x = x + linear(silu(gate) * up, w.w_down)
        return _rms_norm(x[:, -1], self.model.model.norm)

    def _attention(self, w: _Layer, h, cos, sin, k_cache, v_cache, start, end, key_mask):
        B, S, _ = h.shape
        nq, nkv = self.n_heads, self.n_kv
        qkv = torch.nn.functional.linear(h, w.w_qkv, w.b_qkv).view(B, S, nq + 2 * nkv, self.head_dim)
        qk = _rotate(qkv[:, :, : nq + nkv], cos, sin)  # q and k rotated together: (B, S, nq + nkv, hd)
        k_cache[:, :, start:end] = qk[:, :, nq:].transpose(1, 2)
        v_cache[:, :, start:end] = qkv[:, :, nq + nkv:].transpose(1, 2)
        out = torch.nn.functional.scaled_dot_product_attention(
            qk[:, :, :nq].transpose(1, 2), k_cache[:, :, :end], v_cache[:, :, :end], attn_mask=key_mask,
            scale=w.scaling, enable_gqa=nq != nkv)
        return out.transpose(1, 2).reshape(B, S, -1)


def fast_sample(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
                temperature: float, eos_token_id: int | list[int], pad_token_id: int) -> torch.Tensor:
    """Completion ids (B, <= max_new_tokens), pad after each row's first EOS, as ``generate()`` returns them."""
    B, P = input_ids.shape
    device = input_ids.device
    eos = torch.as_tensor(eos_token_id if isinstance(eos_token_id, list) else [eos_token_id], device=device)
    # Positions skip the left padding (as generate() and the training forward number them).
    prompt_pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    positions = torch.cat([prompt_pos, prompt_pos[:, -1:] + 1 + torch.arange(max_new_tokens, device=device)], 1)
    keys = torch.cat([attention_mask.bool(), attention_mask.new_ones(B, max_new_tokens, dtype=torch.bool)], 1)
    dec = _KVDecoder(model, B, P + max_new_tokens, positions)
    causal = torch.ones(P, P, dtype=torch.bool, device=device).tril()
    # A left-pad query sees itself only: its row is never all-masked (no NaN), and no real query sees it.
    prefill_mask = (causal & keys[:, None, None, :P]) | torch.eye(P, dtype=torch.bool, device=device)
    hidden = dec.forward(input_ids, 0, prefill_mask)
    out = torch.full((B, max_new_tokens), pad_token_id, dtype=input_ids.dtype, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for t in range(max_new_tokens):
        logits = torch.nn.functional.linear(hidden, model.lm_head.weight, model.lm_head.bias).float()
        probs = torch.softmax(logits / temperature if temperature != 1.0 else logits, dim=-1)
        token = torch.multinomial(probs, 1).squeeze(1)
        token = torch.where(done, torch.full_like(token, pad_token_id), token)
        out[:, t] = token
        done |= (token == eos[0]) if len(eos) == 1 else torch.isin(token, eos)
        if t + 1 == max_new_tokens or bool(done.all()):
            return out[:, : t + 1]
        hidden = dec.forward(token[:, None], P + t, keys[:, None, None, : P + t + 1])
    return out


def _hf_sample(model, tokenizer, enc: dict, max_new_tokens: int, temperature: float, top_p: float) -> torch.Tensor:
    """``model.generate`` for what the fast sampler does not cover (nucleus sampling, other architectures)."""
    eos = tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    out = model.generate(
        **enc,
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=0,  # sample from the policy itself: the log-probs we train on are the full distribution's
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
        return_dict_in_generate=False,
    )
    if was_training:
        model.train()
    return out[:, enc["input_ids"].shape[1]:]


def _rollout_from(enc: dict, completion_ids: torch.Tensor, prompts: list[str], tokenizer,
                  max_new_tokens: int) -> Rollout:
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
    texts = [tokenizer.decode(row[:n], skip_special_tokens=True) for row, n in zip(completion_ids, lengths)]
    return Rollout(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions_from_mask(attention_mask),
        response_mask=resp_mask,
        completions=texts,
        prompts=list(prompts),
        truncated=truncated,
    )


def completion_logits(model, input_ids, attention_mask, position_ids, num_completion: int) -> torch.Tensor:
    """Logits that predict the completion tokens only: (B, T, V). The prompt's logits are never computed."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=num_completion + 1,
        use_cache=False,
    )
    return out.logits[:, :-1]


def token_logprobs(model, input_ids, attention_mask, position_ids, num_completion: int, temperature: float,
                   chunk_size: int, with_entropy: bool = False):
    """Log π(o_t | q, o_<t) of the sampled tokens, (B, T); and optionally the entropy (B, T), detached."""
    logits = completion_logits(model, input_ids, attention_mask, position_ids, num_completion)
    if temperature != 1.0:
        logits = logits / temperature
    labels = input_ids[:, -num_completion:]
    logprobs = logprobs_from_logits(logits, labels, chunk_size=chunk_size)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = entropy_from_logits(logits.detach(), chunk_size=chunk_size)
    return logprobs, entropy
