"""Masked statistics and loss aggregation over completion tokens.

Objective: the three ways of reducing a per-token loss ``(B, T)`` to a scalar used in LLM RL
(veRL ``loss_agg_mode``):

- ``token_mean``: sum over every completion token of the batch / their count (DAPO, Yu et al. 2025,
  arXiv:2503.14476, the TRL default). Long and short completions weigh per token.
- ``seq_mean_token_mean``: mean over the tokens of each sequence, then over sequences (the GRPO paper,
  Shao et al. 2024, arXiv:2402.03300, eq. 3: ``1/G sum_i 1/|o_i| sum_t``).
- ``seq_mean_token_sum_norm``: per-sequence token sum divided by a constant, then mean over sequences
  (Dr. GRPO, Liu et al. 2025, arXiv:2503.20783: removes the length bias of ``1/|o_i|``).

Departures and conventions:

1. ``response_mask`` is read as boolean (nonzero = completion token). Every function replaces masked
   positions with 0 *before* any arithmetic (``torch.where``), so whatever sits under the mask (pad values,
   ``inf``, ``nan``) changes neither the output nor the gradient.
2. An empty mask gives 0, not ``nan`` (counts are clamped to at least 1): an all-padding micro-batch
   contributes nothing instead of poisoning the step.
3. ``seq_*`` modes average over all B rows, including a row with no completion token (it counts as 0).
4. Gradient accumulation: each micro-batch is normalised by its own counts; weighting the micro-batch
   losses by their share of the minibatch's tokens (``token_mean``) or sequences (``seq_*`` modes)
   recovers the full-minibatch loss and its gradient exactly (the trainer does this).
5. Dr. GRPO's constant defaults to T (the number of columns); a trainer whose columns include the prompt
   should pass ``norm=max_new_tokens``.
"""

from __future__ import annotations

from enum import Enum
from typing import Protocol

import torch

from rlcore.algorithms.registry import Registry


class LossAgg(str, Enum):
    TOKEN_MEAN = "token_mean"
    SEQ_MEAN_TOKEN_MEAN = "seq_mean_token_mean"
    SEQ_MEAN_TOKEN_SUM_NORM = "seq_mean_token_sum_norm"


def check_same_shape(**tensors: torch.Tensor) -> None:
    """ValueError naming the tensors unless all have one shape."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"shapes must match: {listed}")


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    check_same_shape(x=x, mask=mask)
    x = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` where ``mask``; over everything (0-d) or along ``dim``. Empty → 0."""
    count = mask.bool().sum() if dim is None else mask.bool().sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance (0-d) of ``x`` over the masked elements; Bessel-corrected like ``torch.var`` by default."""
    centred = x - masked_mean(x, mask)
    count = mask.bool().sum()
    denom = count - 1 if unbiased else count
    return masked_sum(centred**2, mask) / denom.clamp(min=1)


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """``(x - mean) / std`` over the masked elements; ``shift_mean=False`` keeps the mean. Masked → 0."""
    mean = masked_mean(x, mask)
    whitened = (x - mean) * torch.rsqrt(masked_var(x, mask) + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros((), dtype=whitened.dtype, device=x.device))


class AggregateFn(Protocol):
    def __call__(self, loss_mat: torch.Tensor, mask: torch.Tensor, *, norm: float | None) -> torch.Tensor: ...


_AGGREGATIONS: Registry[LossAgg, AggregateFn] = Registry(LossAgg, "loss aggregation")


def _positive(value: float | None, default: torch.Tensor | float, name: str) -> torch.Tensor | float:
    if value is None:
        return default
    if not value > 0:
        raise ValueError(f"{name} must be > 0 (got {value})")
    return value


# The three share one keyword signature so that aggregate() can call any of them; the means ignore norm.


@_AGGREGATIONS.register(LossAgg.TOKEN_MEAN)
def _token_mean(loss_mat: torch.Tensor, mask: torch.Tensor, *, norm: float | None) -> torch.Tensor:
    return masked_sum(loss_mat, mask) / mask.bool().sum().clamp(min=1)


@_AGGREGATIONS.register(LossAgg.SEQ_MEAN_TOKEN_MEAN)
def _seq_mean_token_mean(loss_mat: torch.Tensor, mask: torch.Tensor, *, norm: float | None) -> torch.Tensor:
    return masked_mean(loss_mat, mask, dim=-1).mean()  # mean over sequences of (B,)


@_AGGREGATIONS.register(LossAgg.SEQ_MEAN_TOKEN_SUM_NORM)
def _seq_mean_token_sum_norm(
    loss_mat: torch.Tensor, mask: torch.Tensor, *, norm: float | None
) -> torch.Tensor:
    per_seq = masked_sum(loss_mat, mask, dim=-1) / _positive(norm, loss_mat.shape[-1], "norm")  # (B,)
    return per_seq.mean()


def aggregate(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    mode: str | LossAgg = LossAgg.TOKEN_MEAN,
    norm: float | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss ``(B, T)`` over ``mask`` ``(B, T)`` to a 0-d tensor.

    ``norm``: Dr. GRPO's constant (``seq_mean_token_sum_norm`` only; default T).
    """
    check_same_shape(loss_mat=loss_mat, mask=mask)
    if loss_mat.dim() != 2:
        raise ValueError(f"loss_mat must be (B, T), got shape {tuple(loss_mat.shape)}")
    impl = _AGGREGATIONS.get(mode)
    return impl(loss_mat, mask, norm=norm)
