"""Per-device routing: which calls the Triton kernels take; everything else runs the reference.

CUDA tensors of float16, bfloat16 or float32 go to the kernels, except dropout (the reference
applies it) and head dims above 256. Other devices and float64 use the reference.
"""

from __future__ import annotations

import torch

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


def _cuda_ok(t: torch.Tensor) -> bool:
    return t.device.type == "cuda" and t.dtype in _KERNEL_DTYPES


def use_triton_entmax(x, alpha_tensor) -> bool:
    return _cuda_ok(x)


def use_triton_attention(q, k, v, attn_mask, dropout_p, is_causal, scale, alpha, head_alpha,
                         dropout_seed) -> bool:
    return (
        _cuda_ok(q)
        and dropout_p == 0.0
        and q.shape[-1] <= MAX_HEAD_DIM
        and v.shape[-1] <= MAX_HEAD_DIM
    )


def triton_entmax(x, alpha, alpha_tensor, dim):
    from .triton_path import entmax_forward

    return entmax_forward(x, alpha, alpha_tensor, dim)


def triton_entmax_backward(grad, p, alpha, alpha_tensor, dim, need_alpha_grad):
    from .triton_path import entmax_backward

    return entmax_backward(grad, p, alpha, alpha_tensor, dim, need_alpha_grad)


def triton_attention(*args):
    from .triton_path import attention_forward

    return attention_forward(*args)


def triton_attention_backward(*args):
    from .triton_path import attention_backward

    return attention_backward(*args)
