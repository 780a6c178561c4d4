"""The ``adasplash`` torch.library operators, their fakes and their autograd.

Public ops (what the FX pass and the eager functions call):

- ``adasplash::entmax(x, alpha, alpha_tensor, dim) -> p``
- ``adasplash::entmax_attention(q, k, v, attn_mask, dropout_p, is_causal, scale, alpha,
  head_alpha, dropout_seed, for_backward) -> (out, tau, row_max, tile_max, u_shift)`` (see
  ``reference.attention_forward`` for the saved statistics; u_shift, which spares the backward a
  pass, has 0 elements unless for_backward)
- their backward ops ``entmax_backward`` and ``entmax_attention_backward``.

Each public op is a ``triton_op`` so that Inductor traces it: on CUDA, into the adasplash Triton
kernels it launches; on other devices, into one call of an opaque ``*_reference`` op that runs the
pure-PyTorch reference (its data-dependent loops cannot be traced). ``routing`` picks the path.
A float ``alpha`` is used unless ``alpha_tensor`` / ``head_alpha`` is given.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.library import custom_op, triton_op

from . import reference, routing
from .layout import TILE


def _contiguous_like(t: Tensor, shape=None, dtype=None) -> Tensor:
    return t.new_empty(t.shape if shape is None else shape, dtype=dtype or t.dtype)


# ----------------------------------------------------------------------------------------------
# Reference ops: opaque, any device.
# ----------------------------------------------------------------------------------------------


@custom_op("adasplash::entmax_reference", mutates_args=())
def entmax_reference(x: Tensor, alpha: float, alpha_tensor: Optional[Tensor], dim: int) -> Tensor:
    a = alpha_tensor if alpha_tensor is not None else alpha
    return reference.entmax_forward(x, a, dim).contiguous()


@entmax_reference.register_fake
def _(x, alpha, alpha_tensor, dim):
    return _contiguous_like(x)


@custom_op("adasplash::entmax_backward_reference", mutates_args=())
def entmax_backward_reference(
    grad: Tensor, p: Tensor, alpha: float, alpha_tensor: Optional[Tensor], dim: int,
    need_alpha_grad: bool,
) -> tuple[Tensor, Tensor]:
    a = alpha_tensor if alpha_tensor is not None else alpha
    shape = alpha_tensor.shape if need_alpha_grad else None
    dx, da = reference.entmax_backward(grad, p, a, dim, shape)
    return dx.contiguous(), (da if da is not None else p.new_empty(0))


@entmax_backward_reference.register_fake
def _(grad, p, alpha, alpha_tensor, dim, need_alpha_grad):
    da = _contiguous_like(alpha_tensor) if need_alpha_grad else p.new_empty(0)
    return _contiguous_like(p), da


def attention_output_fakes(q: Tensor, k: Tensor, v: Tensor, for_backward: bool):
    """Empty (out, tau, row_max, tile_max, u_shift) with the shapes, dtypes and contiguous strides
    of the op."""
    B, Hq, Nq, _ = q.shape
    Nk = k.shape[2]
    stat = reference.compute_dtype(q.dtype)
    out = q.new_empty((B, Hq, Nq, v.shape[-1]))
    tau = q.new_empty((B, Hq, Nq), dtype=stat)
    row_max = q.new_empty((B, Hq, Nq), dtype=stat)
    tile_max = q.new_empty((B, Hq, (Nq + TILE - 1) // TILE, (Nk + TILE - 1) // TILE), dtype=stat)
    u_shift = q.new_empty(out.shape if for_backward else (0,))
    return out, tau, row_max, tile_max, u_shift


@custom_op("adasplash::entmax_attention_reference", mutates_args=())
def entmax_attention_reference(
    q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor], dropout_p: float,
    is_causal: bool, scale: Optional[float], alpha: float, head_alpha: Optional[Tensor],
    dropout_seed: Optional[Tensor], for_backward: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return reference.attention_forward(
        q, k, v, attn_mask, dropout_p, is_causal, scale, alpha, head_alpha, dropout_seed,
        for_backward,
    )


@entmax_attention_reference.register_fake
def _(q, k, v, attn_mask, dropout_p, is_causal, scale, alpha, head_alpha, dropout_seed,
      for_backward):
    return attention_output_fakes(q, k, v, for_backward)


def attention_grad_fakes(q, k, v, attn_mask, head_alpha, need_mask_grad, need_alpha_grad):
    """Empty (dq, dk, dv, dalpha, dmask); dalpha / dmask have 0 elements unless asked for."""
    dalpha = _contiguous_like(head_alpha) if need_alpha_grad else q.new_empty(0)
    dmask = _contiguous_like(attn_mask) if need_mask_grad else q.new_empty(0)
    return _contiguous_like(q), _contiguous_like(k), _contiguous_like(v), dalpha, dmask


@custom_op("adasplash::entmax_attention_backward_reference", mutates_args=())
def entmax_attention_backward_reference(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, tau: Tensor, row_max: Tensor,
    attn_mask: Optional[Tensor], dropout_p: float, is_causal: bool, scale: Optional[float],
    alpha: float, head_alpha: Optional[Tensor], dropout_seed: Optional[Tensor],
    need_mask_grad: bool, need_alpha_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return reference.attention_backward(
        grad_out, q, k, v, tau, row_max, attn_mask, dropout_p, is_causal, scale, alpha, head_alpha,
        dropout_seed, need_mask_grad, need_alpha_grad,
    )


@entmax_attention_backward_reference.register_fake
def _(grad_out, q, k, v, tau, row_max, attn_mask, dropout_p, is_causal, scale, alpha, head_alpha,
      dropout_seed, need_mask_grad, need_alpha_grad):
    return attention_grad_fakes(q, k, v, attn_mask, head_alpha, need_mask_grad, need_alpha_grad)


# ----------------------------------------------------------------------------------------------
# Public ops: Triton on CUDA, the reference op elsewhere.
# ----------------------------------------------------------------------------------------------


@triton_op("adasplash::entmax", mutates_args=())
def entmax(x: Tensor, alpha: float = 1.5, alpha_tensor: Optional[Tensor] = None, dim: int = -1) -> Tensor:
    """p = alpha-entmax(x) along dim."""
    if routing.use_triton_entmax(x, alpha_tensor):
        return routing.triton_entmax(x, alpha, alpha_tensor, dim)
    return torch.ops.adasplash.entmax_reference(x, alpha, alpha_tensor, dim)


@triton_op("adasplash::entmax_backward", mutates_args=())
def entmax_backward(
    grad: Tensor, p: Tensor, alpha: float, alpha_tensor: Optional[Tensor], dim: int,
    need_alpha_grad: bool,
) -> tuple[Tensor, Tensor]:
    """(dx, dalpha) of entmax; dalpha has 0 elements unless need_alpha_grad."""
    if routing.use_triton_entmax(p, alpha_tensor):
        return routing.triton_entmax_backward(grad, p, alpha, alpha_tensor, dim, need_alpha_grad)
    return torch.ops.adasplash.entmax_backward_reference(
        grad, p, alpha, alpha_tensor, dim, need_alpha_grad
    )


@triton_op("adasplash::entmax_attention", mutates_args=())
def entmax_attention(
    q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None, dropout_p: float = 0.0,
    is_causal: bool = False, scale: Optional[float] = None, alpha: float = 1.5,
    head_alpha: Optional[Tensor] = None, dropout_seed: Optional[Tensor] = None,
    for_backward: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(out, tau, row_max, tile_max, u_shift) of alpha-entmax attention (DESIGN.md section 1);
    for_backward: also u_shift (with out, the u-weighted mean of the values), with which the
    backward needs one pass less (set it when a backward will follow; the backward is right either
    way)."""
    args = (q, k, v, attn_mask, dropout_p, is_causal, scale, alpha, head_alpha, dropout_seed)
    if routing.use_triton_attention(*args):
        return routing.triton_attention(*args, for_backward)
    return torch.ops.adasplash.entmax_attention_reference(*args, for_backward)


@triton_op("adasplash::entmax_attention_backward", mutates_args=())
def entmax_attention_backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, tau: Tensor, row_max: Tensor,
    tile_max: Tensor, out: Tensor, u_shift: Tensor, attn_mask: Optional[Tensor], dropout_p: float,
    is_causal: bool, scale: Optional[float], alpha: float, head_alpha: Optional[Tensor],
    dropout_seed: Optional[Tensor], need_mask_grad: bool, need_alpha_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dq, dk, dv, dalpha, dmask); dalpha and dmask have 0 elements unless asked for. out and
    u_shift are the forward's (u_shift has 0 elements if it was not kept)."""
    fwd_args = (q, k, v, attn_mask, dropout_p, is_causal, scale, alpha, head_alpha, dropout_seed)
    if routing.use_triton_attention(*fwd_args):
        return routing.triton_attention_backward(
            grad_out, q, k, v, tau, row_max, tile_max, out, u_shift, attn_mask, dropout_p, is_causal,
            scale, alpha, head_alpha, dropout_seed, need_mask_grad, need_alpha_grad,
        )
    return torch.ops.adasplash.entmax_attention_backward_reference(
        grad_out, q, k, v, tau, row_max, attn_mask, dropout_p, is_causal, scale, alpha,
        head_alpha, dropout_seed, need_mask_grad, need_alpha_grad,
    )


# ----------------------------------------------------------------------------------------------
# Autograd.
# ----------------------------------------------------------------------------------------------


def _entmax_setup(ctx, inputs, output):
    x, alpha, alpha_tensor, dim = inputs
    ctx.alpha, ctx.dim = alpha, dim
    ctx.save_for_backward(output, alpha_tensor)


def _entmax_grad(ctx, grad):
    p, alpha_tensor = ctx.saved_tensors
    need_alpha = alpha_tensor is not None and ctx.needs_input_grad[2]
    dx, da = torch.ops.adasplash.entmax_backward(
        grad, p, ctx.alpha, alpha_tensor, ctx.dim, need_alpha
    )
    return dx, None, (da if need_alpha else None), None


entmax.register_autograd(_entmax_grad, setup_context=_entmax_setup)


def _attention_setup(ctx, inputs, output):
    q, k, v, attn_mask, dropout_p, is_causal, scale, alpha, head_alpha, dropout_seed, _ = inputs
    out, tau, row_max, tile_max, u_shift = output
    ctx.dropout_p, ctx.is_causal, ctx.scale, ctx.alpha = dropout_p, is_causal, scale, alpha
    ctx.save_for_backward(q, k, v, out, tau, row_max, tile_max, u_shift, attn_mask, head_alpha,
                          dropout_seed)


def _attention_grad(ctx, grad_out, _grad_tau, _grad_row_max, _grad_tile_max, _grad_u_shift):
    q, k, v, out, tau, row_max, tile_max, u_shift, attn_mask, head_alpha, dropout_seed = (
        ctx.saved_tensors)
    need_mask = attn_mask is not None and attn_mask.is_floating_point() and ctx.needs_input_grad[3]
    need_alpha = head_alpha is not None and ctx.needs_input_grad[8]
    dq, dk, dv, dalpha, dmask = torch.ops.adasplash.entmax_attention_backward(
        grad_out, q, k, v, tau, row_max, tile_max, out, u_shift, attn_mask, ctx.dropout_p,
        ctx.is_causal, ctx.scale, ctx.alpha, head_alpha, dropout_seed, need_mask, need_alpha,
    )
    return (
        dq, dk, dv, dmask if need_mask else None, None, None, None, None,
        dalpha if need_alpha else None, None, None,
    )


entmax_attention.register_autograd(_attention_grad, setup_context=_attention_setup)
