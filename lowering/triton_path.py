"""The CUDA implementations of the adasplash ops: layout glue around the launch helpers of
``kernels``, with every kernel launched through ``wrap_triton`` so that Inductor, tracing the
``triton_op``, emits the kernels into its output code.
"""

from __future__ import annotations

import torch
from torch.library import wrap_triton

from kernels import attention_bwd, attention_fwd, entmax_rows


def _rows(t: torch.Tensor, dim: int) -> torch.Tensor:
    """t with dim moved last, as a contiguous (rows, n) matrix."""
    return t.movedim(dim, -1).contiguous().reshape(-1, t.shape[dim])


def _row_alpha(alpha_tensor, x: torch.Tensor, dim: int):
    """A per-row float32 alpha for the rows of ``_rows(x, dim)`` (None for a float alpha)."""
    if alpha_tensor is None:
        return None
    rest = x.movedim(dim, -1).shape[:-1]
    return alpha_tensor.to(torch.float32).expand(rest).reshape(-1).contiguous()


def entmax_forward(x, alpha, alpha_tensor, dim):
    p = entmax_rows.entmax_forward(
        _rows(x, dim), alpha, _row_alpha(alpha_tensor, x, dim), launch=wrap_triton
    )
    return p.reshape(x.movedim(dim, -1).shape).movedim(-1, dim)


def entmax_backward(grad, p, alpha, alpha_tensor, dim, need_alpha_grad):
    dx, da = entmax_rows.entmax_backward(
        _rows(grad, dim), _rows(p, dim), alpha, _row_alpha(alpha_tensor, p, dim),
        need_alpha_grad, launch=wrap_triton,
    )
    shape = p.movedim(dim, -1).shape
    dx = dx.reshape(shape).movedim(-1, dim)
    if not need_alpha_grad:
        return dx, p.new_empty(0)
    da = da.reshape(shape[:-1])
    lead = da.dim() - alpha_tensor.dim()
    da = da.sum(tuple(range(lead))) if lead > 0 else da
    return dx, da.sum_to_size(alpha_tensor.shape).to(alpha_tensor.dtype)


def _launches_directly() -> bool:
    """Whether ``wrap_triton`` launches the kernels itself (eager calls of the ops) rather than
    recording them for a graph: only then do launch options such as ``maxnreg`` reach Triton
    (Inductor emits launches of its own, without register caps), and descriptor arguments
    (torch records none in a graph it traces outside dynamo)."""
    try:
        from torch._library.triton import is_wrap_triton_enabled  # private: feature-checked
    except ImportError:
        return False
    return not is_wrap_triton_enabled()


def attention_forward(q, k, v, attn_mask, dropout_p, is_causal, scale, alpha, head_alpha,
                      dropout_seed, for_backward):
    return attention_fwd.attention_forward(
        q, k, v, attn_mask, is_causal, scale, alpha, head_alpha, for_backward, launch=wrap_triton,
        direct_launch=_launches_directly(),
    )


def attention_backward(grad_out, q, k, v, tau, row_max, tile_max, out, u_shift, attn_mask,
                       dropout_p, is_causal, scale, alpha, head_alpha, dropout_seed, need_mask_grad,
                       need_alpha_grad):
    if need_mask_grad:
        # The gradient of a float mask is dS itself, an (Nq x Nk) tensor: the reference computes
        # it block by block (on the GPU, with torch ops).
        return torch.ops.adasplash.entmax_attention_backward_reference(
            grad_out, q, k, v, tau, row_max, attn_mask, dropout_p, is_causal, scale, alpha,
            head_alpha, dropout_seed, need_mask_grad, need_alpha_grad,
        )
    dq, dk, dv, dalpha = attention_bwd.attention_backward(
        grad_out, q, k, v, tau, row_max, tile_max, attn_mask, is_causal, scale, alpha, head_alpha,
        need_alpha_grad, out, u_shift, launch=wrap_triton,
    )
    dalpha = dalpha.to(head_alpha.dtype) if need_alpha_grad else q.new_empty(0)
    return dq, dk, dv, dalpha, q.new_empty(0)
