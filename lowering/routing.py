"""Per-device routing: which calls the Triton kernels take; everything else runs the reference.

CUDA tensors of float16, bfloat16 or float32 go to the kernels, except dropout (the reference
applies it) and head dims above 256; attention also needs a card that gives a kernel program the
shared memory of the attention kernels (``kernels.attention_fwd.SHARED_MEMORY``: a Hopper card),
else it runs the reference there and warns once per card. Other devices and float64 use the
reference.
"""

from __future__ import annotations

import functools
import warnings

import torch

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


def _cuda_ok(t: torch.Tensor) -> bool:
    return t.device.type == "cuda" and t.dtype in _KERNEL_DTYPES


def max_shared_memory(device_index: int) -> int:
    """Bytes of shared memory a kernel program may take on the CUDA card ``device_index``."""
    import triton

    return triton.runtime.driver.active.utils.get_device_properties(device_index)["max_shared_mem"]


@functools.lru_cache(maxsize=None)
def _attention_fits(device_index: int) -> bool:
    from kernels.attention_fwd import SHARED_MEMORY

    have = max_shared_memory(device_index)
    if have < SHARED_MEMORY:
        warnings.warn(
            f"adasplash_compile: CUDA card {device_index} gives a kernel program "
            f"{have // 1024} KiB of shared memory; the attention kernels need "
            f"{SHARED_MEMORY // 1024} KiB (a Hopper card has 227 KiB). entmax_attention runs the "
            "PyTorch reference on this card: exact, but dense and slower.", stacklevel=2)
    return have >= SHARED_MEMORY


def _attention_card_ok(t: torch.Tensor) -> bool:
    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    return _attention_fits(index)


def use_triton_entmax(x, alpha_tensor) -> bool:
    return _cuda_ok(x)


def use_triton_attention(q, k, v, attn_mask, dropout_p, is_causal, scale, alpha, head_alpha,
                         dropout_seed) -> bool:
    return (
        _cuda_ok(q)
        and dropout_p == 0.0
        and q.shape[-1] <= MAX_HEAD_DIM
        and v.shape[-1] <= MAX_HEAD_DIM
        and _attention_card_ok(q)
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
