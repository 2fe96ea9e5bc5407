"""Fast paths for plain Qwen2/Llama policies: a lean KV-cache sampler and a lean scoring forward.

Both do the arithmetic of the Hugging Face modules on the model's own parameters, without their per-call
Python (see BENCHMARKS.md for the profile that motivated them). ``rlcore.rollout`` uses them only where
``fast_sampling_supported`` / ``lean_forward_supported`` say they compute exactly what the model's own
``generate()`` / forward would; everything else (PEFT wrappers, DDP, GPUs under autocast, nucleus sampling,
quantised or sharded weights, other architectures) takes the Hugging Face path.
tests/rlcore/test_fast_paths.py checks the equivalence: the same tokens for a seed, the same logits.
"""

from __future__ import annotations

import torch

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
    if getattr(cfg, "use_sliding_window", False) or not hasattr(model, "lm_head"):
        return False
    if type(model).__name__ not in ("Qwen2ForCausalLM", "LlamaForCausalLM"):
        return False  # PEFT wrappers and subclasses may change the forward: use the reference path
    if not hasattr(getattr(model, "model", None), "rotary_emb"):
        return False
    if getattr(model, "is_quantized", False) or getattr(cfg, "quantization_config", None) is not None:
        return False  # packed weights: only the quantised modules know how to multiply with them
    layer = model.model.layers[0] if len(model.model.layers) else None
    if layer is None or type(layer.self_attn.q_proj) is not torch.nn.Linear:
        return False
    if tuple(layer.self_attn.q_proj.weight.shape[1:]) != (cfg.hidden_size,):
        return False  # parameters sharded away (ZeRO-3): only the model's own forward gathers them
    return getattr(cfg, "hidden_act", "silu") == "silu" and not getattr(cfg, "mlp_bias", False)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # The HF RMSNorm's arithmetic, op for op (normalise in float32, cast back, scale); on CPU these five small
    # ops are faster than the composite torch.rms_norm.
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _rotate_half_rows(w: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """Rows (or bias entries) of a projection permuted and negated so that it outputs ``rotate_half(y)``."""
    w = w.view(n_heads, head_dim, *w.shape[1:])
    half = head_dim // 2
    return torch.cat([-w[:, half:], w[:, :half]], dim=1).reshape(n_heads * head_dim, *w.shape[2:])


def _kn(w: torch.Tensor) -> torch.Tensor:
    """A weight (N, K) as the (K, N) operand of ``x @ w``. On CPU a contiguous copy: measured ~1.6x faster
    than the transposed view for the skinny (B x K) products of decoding; made once per rollout."""
    return w.t().contiguous() if w.device.type == "cpu" else w.t()


class _Layer:
    """One decoder layer's weights, arranged for few, large products per token:
    ``[q; k; v; rot(q); rot(k)]`` in one matrix (rotary then needs only ``qk * cos + rot(qk) * sin``) and
    ``[gate; up]`` in another. Rebuilt for every rollout (the weights change at each update)."""

    def __init__(self, layer, n_heads: int, n_kv: int, head_dim: int):
        attn, mlp = layer.self_attn, layer.mlp
        q, k, v = attn.q_proj, attn.k_proj, attn.v_proj
        w = [
            q.weight,
            k.weight,
            v.weight,
            _rotate_half_rows(q.weight, n_heads, head_dim),
            _rotate_half_rows(k.weight, n_kv, head_dim),
        ]
        self.w_qkv = _kn(torch.cat(w))
        self.b_qkv = None
        if q.bias is not None:
            self.b_qkv = torch.cat(
                [
                    q.bias,
                    k.bias,
                    v.bias,
                    _rotate_half_rows(q.bias, n_heads, head_dim),
                    _rotate_half_rows(k.bias, n_kv, head_dim),
                ]
            )
        self.w_o, self.b_o = _kn(attn.o_proj.weight), attn.o_proj.bias
        self.w_gate_up = _kn(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]))
        self.w_down = _kn(mlp.down_proj.weight)
        self.norm1 = (layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
        self.norm2 = (layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon)
        self.scaling = attn.scaling


class _KVDecoder:
    """The model's decoder layers over a fixed-size KV cache ``(B, kv_heads, P + T, head_dim)`` per layer.
    Hidden states are 2-D ``(B * S, H)`` so that every projection is one ``addmm``."""

    def __init__(self, model, batch: int, length: int, positions: torch.Tensor):
        cfg = model.config
        self.model, self.n_heads, self.n_kv = model, cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.layers = [_Layer(layer, self.n_heads, self.n_kv, hd) for layer in model.model.layers]
        emb = model.model.embed_tokens.weight
        shape = (batch, self.n_kv, length, hd)
        self.cache = [(emb.new_empty(shape), emb.new_empty(shape)) for _ in self.layers]
        cos, sin = model.model.rotary_emb(emb[:1], positions)  # (B, P + T, head_dim), computed once
        heads = self.n_heads + self.n_kv  # one table row per position covering q's and k's heads
        self.cos, self.sin = cos.repeat(1, 1, heads), sin.repeat(1, 1, heads)
        self.final_norm = (model.model.norm.weight, model.model.norm.variance_epsilon)

    def forward(self, ids: torch.Tensor, start: int, attn_mask: torch.Tensor) -> torch.Tensor:
        """Hidden states of the last position for tokens ``ids`` (B, S) at cache columns ``start:start+S``;
        ``attn_mask`` (B, 1, S, start + S): boolean for the prompt (S > 1), additive float for one token."""
        B, S = ids.shape
        x = self.model.model.embed_tokens(ids).view(B * S, -1)
        end = start + S
        cos, sin = self.cos[:, start:end].reshape(B * S, -1), self.sin[:, start:end].reshape(B * S, -1)
        for w, (k_cache, v_cache) in zip(self.layers, self.cache, strict=True):
            h = _rms_norm(x, *w.norm1)
            h = self._attention(w, h, cos, sin, k_cache, v_cache, B, start, end, attn_mask)
            x = torch.addmm(x, h, w.w_o) if w.b_o is None else torch.addmm(x + w.b_o, h, w.w_o)
            gate, up = torch.mm(_rms_norm(x, *w.norm2), w.w_gate_up).chunk(2, dim=-1)
            x = torch.addmm(x, torch.nn.functional.silu(gate) * up, w.w_down)
        return _rms_norm(x.view(B, S, -1)[:, -1], *self.final_norm)

    def _attention(self, w: _Layer, h, cos, sin, k_cache, v_cache, B, start, end, attn_mask):
        S, nq, nkv, hd = end - start, self.n_heads, self.n_kv, self.head_dim
        y = torch.addmm(w.b_qkv, h, w.w_qkv) if w.b_qkv is not None else torch.mm(h, w.w_qkv)
        n_qk, n_v = (nq + nkv) * hd, nkv * hd
        qk = torch.addcmul(y[:, :n_qk] * cos, y[:, n_qk + n_v :], sin).view(B, S, nq + nkv, hd)
        k_cache[:, :, start:end] = qk[:, :, nq:].transpose(1, 2)
        v_cache[:, :, start:end] = y[:, n_qk : n_qk + n_v].view(B, S, nkv, hd).transpose(1, 2)
        keys, values = k_cache[:, :, :end], v_cache[:, :, :end]
        if S == 1:  # one query per row: grouped heads as rows of one batched product, no repeated k/v
            q = qk[:, 0, :nq].view(B, nkv, nq // nkv, hd)
            scores = torch.matmul(q, keys.transpose(-1, -2)).mul_(w.scaling).add_(attn_mask)
            out = torch.matmul(torch.softmax(scores, dim=-1), values)  # (B, nkv, groups, hd)
            return out.reshape(B, nq * hd)
        out = torch.nn.functional.scaled_dot_product_attention(
            qk[:, :, :nq].transpose(1, 2),
            keys,
            values,
            attn_mask=attn_mask,
            scale=w.scaling,
            enable_gqa=nq != nkv,
        )
        return out.transpose(1, 2).reshape(B * S, nq * hd)


def fast_sample(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    eos_token_id: int | list[int],
    pad_token_id: int,
) -> torch.Tensor:
    """Completion ids (B, <= max_new_tokens), pad after each row's first EOS, as ``generate()`` returns."""
    B, P = input_ids.shape
    device = input_ids.device
    eos = torch.as_tensor(eos_token_id if isinstance(eos_token_id, list) else [eos_token_id], device=device)
    # Positions skip the left padding (as generate() and the training forward number them).
    prompt_pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    new_pos = prompt_pos[:, -1:] + 1 + torch.arange(max_new_tokens, device=device)
    positions = torch.cat([prompt_pos, new_pos], 1)
    keys = torch.cat([attention_mask.bool(), attention_mask.new_ones(B, max_new_tokens, dtype=torch.bool)], 1)
    dec = _KVDecoder(model, B, P + max_new_tokens, positions)
    causal = torch.ones(P, P, dtype=torch.bool, device=device).tril()
    # A left-pad query sees itself only: its row is never all-masked (no NaN), and no real query sees it.
    prefill_mask = (causal & keys[:, None, None, :P]) | torch.eye(P, dtype=torch.bool, device=device)
    hidden = dec.forward(input_ids, 0, prefill_mask)
    key_bias = torch.zeros(keys.shape, dtype=hidden.dtype, device=device).masked_fill_(~keys, float("-inf"))
    key_bias = key_bias[:, None, None, :]  # (B, 1, 1, P + T), added to the scores of one decoding step
    out = torch.full((B, max_new_tokens), pad_token_id, dtype=input_ids.dtype, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    lm_head = _kn(model.lm_head.weight)
    for t in range(max_new_tokens):
        logits = torch.mm(hidden, lm_head).float()
        if model.lm_head.bias is not None:
            logits = logits + model.lm_head.bias
        if temperature == 0:  # greedy decoding (evaluation): no draw from the random stream
            token = logits.argmax(dim=-1)
        else:
            # softmax + multinomial, one call per token, and a stop as soon as every row is done:
            # generate()'s use of the random stream, so a seed gives the same samples on either path (tests
            # tuned on one hold on the other). A Gumbel-max draw would be a little faster but would change
            # every sample.
            token = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1).squeeze(1)
        out[:, t] = token.masked_fill_(done, pad_token_id)
        done |= (token == eos[0]) if len(eos) == 1 else torch.isin(token, eos)
        if t + 1 == max_new_tokens or bool(done.all()):
            return out[:, : t + 1]
        hidden = dec.forward(token[:, None], P + t, key_bias[..., : P + t + 1])
    return out


# ---- the lean scoring forward ---------------------------------------------------------------------------
# The profile of a tiny-model step on CPU put a third of the reference and training forwards in the HF
# modules' own work (decorators, output capture, mask construction per call), not in arithmetic. The same
# layers, run here on the model's parameters with autograd, cost only their arithmetic. CPU only: on a GPU
# the HF forward (under accelerate's autocast, or a DDP wrapper) is kept as is.


def lean_forward_supported(model, input_ids: torch.Tensor) -> bool:
    cfg = getattr(model, "config", None)
    return (
        input_ids.device.type == "cpu"
        and fast_sampling_supported(model, 1.0)
        and not getattr(cfg, "attention_dropout", 0.0)
        and not torch.is_autocast_enabled("cpu")
        and not getattr(model, "is_activation_checkpointing", False)  # only the HF layers recompute
    )


def lean_logits(model, input_ids, attention_mask, position_ids, keep: int) -> torch.Tensor:
    """Logits of the last ``keep`` positions, (B, keep, V): the HF forward's arithmetic, differentiable."""
    hidden = lean_hidden(model, input_ids, attention_mask, position_ids, keep)
    return torch.nn.functional.linear(hidden, model.lm_head.weight, model.lm_head.bias)


def lean_hidden(model, input_ids, attention_mask, position_ids, keep: int) -> torch.Tensor:
    """Final (normed) hidden states of the last ``keep`` positions, (B, keep, H), differentiable."""
    F = torch.nn.functional
    cfg, inner = model.config, model.model
    B, L = input_ids.shape
    nq, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // nq
    x = inner.embed_tokens(input_ids)
    cos, sin = inner.rotary_emb(x, position_ids)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, L, hd)
    causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
    # Left-pad queries see themselves only (no all-masked row, no NaN); no real query sees a masked key.
    eye = torch.eye(L, dtype=torch.bool, device=x.device)
    mask = (causal & attention_mask.bool()[:, None, None, :]) | eye
    for layer in inner.layers:
        attn, mlp = layer.self_attn, layer.mlp
        h = _rms_norm(x, layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
        q = F.linear(h, attn.q_proj.weight, attn.q_proj.bias).view(B, L, nq, hd).transpose(1, 2)
        k = F.linear(h, attn.k_proj.weight, attn.k_proj.bias).view(B, L, nkv, hd).transpose(1, 2)
        v = F.linear(h, attn.v_proj.weight, attn.v_proj.bias).view(B, L, nkv, hd).transpose(1, 2)
        out = F.scaled_dot_product_attention(
            _rope(q, cos, sin),
            _rope(k, cos, sin),
            v,
            attn_mask=mask,
            scale=attn.scaling,
            enable_gqa=nq != nkv,
        )
        x = x + F.linear(out.transpose(1, 2).reshape(B, L, nq * hd), attn.o_proj.weight, attn.o_proj.bias)
        post = layer.post_attention_layernorm
        h = _rms_norm(x, post.weight, post.variance_epsilon)
        x = x + F.linear(
            F.silu(F.linear(h, mlp.gate_proj.weight)) * F.linear(h, mlp.up_proj.weight), mlp.down_proj.weight
        )
    return _rms_norm(x[:, -keep:], inner.norm.weight, inner.norm.variance_epsilon)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin
