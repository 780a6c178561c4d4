"""Eager entry points: ``entmax`` and ``entmax_attention`` (validated calls of the adasplash ops)."""

from __future__ import annotations

from typing import Optional, Union

import torch

import lowering  # noqa: F401  (registers torch.ops.adasplash)
from lowering.stats import attention_stats as _attention_stats

from .checks import check_attention_args, check_entmax_args

Alpha = Union[float, torch.Tensor]


def entmax(x: torch.Tensor, alpha: Alpha = 1.5, dim: int = -1) -> torch.Tensor:
    """alpha-entmax along ``dim``: p_j = [(alpha-1) x_j - tau]_+ ** (1/(alpha-1)), sum_j p_j = 1.

    alpha: a float > 1 (1.5 by default; 2 is sparsemax) or a tensor broadcastable to ``x`` with
    ``dim`` removed (differentiable). Entries equal to -inf get probability 0; a row of only -inf
    gives zeros. Between two matmuls inside a compiled model, the backend fuses it into attention.
    """
    check_entmax_args(x, alpha, dim)
    if isinstance(alpha, torch.Tensor):
        return torch.ops.adasplash.entmax(x, 1.5, alpha, dim)
    return torch.ops.adasplash.entmax(x, float(alpha), None, dim)


def entmax_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    alpha: Alpha = 1.5,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """Sparse alpha-entmax attention with the signature of ``F.scaled_dot_product_attention``.

    out = entmax_alpha(scale * q k^T + mask) v over the keys. Layouts: q (B, Hq, Nq, D),
    k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv); Hkv < Hq needs ``enable_gqa`` (query head h uses kv
    head h // (Hq // Hkv)). ``attn_mask``: bool (True = attend) or float (added to the scores),
    broadcastable to (B, Hq, Nq, Nk). ``is_causal`` masks keys j > i (top-left aligned, as SDPA).
    ``alpha``: a float > 1 or a (Hq,) tensor, one alpha per query head, that may require grad.
    Dropout with probability ``dropout_p`` is applied to the attention weights. A query row with
    no admissible key outputs zeros.
    """
    check_attention_args(query, key, value, attn_mask, dropout_p, is_causal, scale, alpha, enable_gqa)
    return attention_op(query, key, value, attn_mask, dropout_p, is_causal, scale, alpha)


def attention_op(query, key, value, attn_mask, dropout_p, is_causal, scale, alpha: Alpha) -> torch.Tensor:
    """The ``adasplash::entmax_attention`` output for checked arguments (no validation, so that it
    also traces on fake tensors): a fresh dropout seed per call, a tensor alpha as head_alpha, and
    the backward's u_shift kept when autograd will want it."""
    seed = None
    if dropout_p > 0:
        seed = torch.randint(0, 2**31 - 1, (1,), dtype=torch.int64, device=query.device)
    head_alpha = alpha if isinstance(alpha, torch.Tensor) else None
    alpha_f = 1.5 if head_alpha is not None else float(alpha)
    scale_f = None if scale is None else float(scale)
    return torch.ops.adasplash.entmax_attention(
        query, key, value, attn_mask, float(dropout_p), is_causal, scale_f, alpha_f, head_alpha, seed,
        needs_backward(query, key, value),
    )[0]


def needs_backward(*tensors: torch.Tensor) -> bool:
    """Will autograd record a call on these tensors (grad mode on, one of them requires grad)?"""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def attention_stats(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    is_causal: bool = False,
    scale: Optional[float] = None,
    alpha: Alpha = 1.5,
    enable_gqa: bool = False,
) -> dict:
    """How sparse ``entmax_attention`` is on these inputs (runs its forward once, no dropout).

    Returns ``live_tile_fraction`` (of the 64 x 64 query-key tiles with an admissible entry, the
    share the kernels visit: 1 - block sparsity), ``mean_support`` (keys with nonzero weight per
    query row), ``mean_keys`` (admissible keys per row) and, on CUDA, ``threshold_passes`` (mean
    threshold passes per query block). Off the hot path: ``entmax_attention`` computes none of it.
    """
    check_attention_args(query, key, value, attn_mask, 0.0, is_causal, scale, alpha, enable_gqa)
    head_alpha = alpha if isinstance(alpha, torch.Tensor) else None
    return _attention_stats(query, key, value, attn_mask, is_causal,
                            None if scale is None else float(scale),
                            1.5 if head_alpha is not None else float(alpha), head_alpha)
