"""Token log-probabilities and entropies from logits, chunked so the vocabulary never blows up memory.

Objective: ``log pi(y_t | x, y_<t) = logits[t, y_t] - logsumexp(logits[t])`` and the entropy
``H_t = logsumexp(logits[t]) - sum_v p_v * logits[t, v]`` for every token, in float32.

Why not ``torch.log_softmax(logits.float(), -1).gather(...)``: for bf16 logits ``(B, T, V)`` it holds a
float32 copy and a float32 log-softmax of size ``B*T*V`` at once, and autograd keeps one of them until the
backward pass: each is ~10 GB at V = 152k and 8 x 2048 tokens — the out-of-memory that users of TRL, veRL
and OpenRLHF report for long completions.

How (departures from the naive formula, none in the numbers):

1. Rows are processed in chunks of ``chunk_size`` tokens; each chunk is upcast to float32, reduced with
   ``logsumexp`` and gathered, then dropped. Peak extra memory is a few ``chunk_size x V`` float32 buffers.
2. A custom ``autograd.Function`` saves only the logits (which the model produced anyway), the labels and
   the per-token ``logsumexp`` ``(B, T)``; the backward recomputes the softmax chunk by chunk and writes
   ``d logp / d logits = onehot(y) - softmax`` straight into one gradient buffer of the logits' dtype.
3. Chunks are views of the logits, so a sliced ``logits[:, prompt_len - 1 : -1]`` is never copied whole.
4. Outputs are float32 (float64 for float64 logits): ratios ``exp(logp - old_logp)`` must be exactly 1
   when nothing changed, which bf16 log-probs cannot promise. Double backward is not supported. Logits must
   be finite (``-inf`` masking belongs to sampling, not here).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.autograd.function import once_differentiable

_Block = tuple[slice, slice]


def _blocks(batch: int, seq: int, chunk_size: int) -> Iterator[_Block]:
    """Index blocks of at most ``chunk_size`` tokens covering a ``(B, T)`` grid: whole rows when T is small,
    pieces of one row when T is long."""
    if seq >= chunk_size:
        for b in range(batch):
            for t0 in range(0, seq, chunk_size):
                yield slice(b, b + 1), slice(t0, min(t0 + chunk_size, seq))
    else:
        rows = chunk_size // seq
        for b0 in range(0, batch, rows):
            yield slice(b0, min(b0 + rows, batch)), slice(0, seq)


def _compute_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.promote_types(logits.dtype, torch.float32)


class _ChunkedLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, labels: torch.Tensor, chunk_size: int) -> torch.Tensor:
        dtype = _compute_dtype(logits)
        out = torch.empty(labels.shape, dtype=dtype, device=logits.device)  # (B, T)
        lse = torch.empty_like(out)  # (B, T)
        for blk in _blocks(*labels.shape, chunk_size):
            x = logits[blk].to(dtype)  # (b, t, V), the only full-vocabulary buffer alive
            lse[blk] = torch.logsumexp(x, dim=-1)
            out[blk] = x.gather(-1, labels[blk].unsqueeze(-1)).squeeze(-1) - lse[blk]
        ctx.save_for_backward(logits, labels, lse)
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        logits, labels, lse = ctx.saved_tensors
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)  # (B, T, V)
        for blk in _blocks(*labels.shape, ctx.chunk_size):
            g = grad_out[blk].to(lse.dtype).unsqueeze(-1)  # (b, t, 1)
            probs = torch.exp(logits[blk].to(lse.dtype) - lse[blk].unsqueeze(-1))  # (b, t, V)
            chunk_grad = probs.mul_(-g).scatter_add_(-1, labels[blk].unsqueeze(-1), g)
            grad[blk] = chunk_grad
        return grad, None, None


class _ChunkedEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, chunk_size: int) -> torch.Tensor:
        dtype = _compute_dtype(logits)
        entropy = torch.empty(logits.shape[:-1], dtype=dtype, device=logits.device)  # (B, T)
        lse = torch.empty_like(entropy)  # (B, T)
        for blk in _blocks(*entropy.shape, chunk_size):
            x = logits[blk].to(dtype)  # (b, t, V)
            lse[blk] = torch.logsumexp(x, dim=-1)
            probs = torch.exp(x - lse[blk].unsqueeze(-1))
            entropy[blk] = lse[blk] - (probs * x).sum(-1)
        ctx.save_for_backward(logits, lse, entropy)
        ctx.chunk_size = chunk_size
        return entropy

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        # dH/dx_v = -p_v * (x_v - E_p[x]), with E_p[x] = lse - H.
        logits, lse, entropy = ctx.saved_tensors
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)  # (B, T, V)
        for blk in _blocks(*entropy.shape, ctx.chunk_size):
            x = logits[blk].to(lse.dtype)  # (b, t, V)
            probs = torch.exp(x - lse[blk].unsqueeze(-1))
            mean_x = (lse[blk] - entropy[blk]).unsqueeze(-1)
            grad[blk] = -probs * (x - mean_x) * grad_out[blk].to(lse.dtype).unsqueeze(-1)
        return grad, None


def _as_3d(logits: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """``(B, T, V)`` as is, ``(N, V)`` as ``(1, N, V)`` (a view); anything else is an error."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (got {chunk_size})")
    if logits.dim() == 2:
        return logits.unsqueeze(0)
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, T, V) or (N, V), got shape {tuple(logits.shape)}")
    return logits


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """``log_softmax(logits)`` gathered at ``labels``: logits ``(B, T, V)``, labels ``(B, T)`` → ``(B, T)``
    float32, differentiable. Labels must be valid token ids everywhere (put any id, e.g. pad, under the mask).
    """
    logits3 = _as_3d(logits, chunk_size)
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels {tuple(labels.shape)} must match logits {tuple(logits.shape)} minus vocab")
    out = _ChunkedLogProbs.apply(logits3, labels.reshape(logits3.shape[:-1]).long(), chunk_size)
    return out.reshape(labels.shape)


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` per token: ``(B, T, V)`` → ``(B, T)`` float32, differentiable."""
    logits3 = _as_3d(logits, chunk_size)
    return _ChunkedEntropy.apply(logits3, chunk_size).reshape(logits.shape[:-1])
