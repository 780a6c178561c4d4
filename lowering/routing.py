"""Per-device routing: which inputs the Triton kernels take; everything else runs the reference."""

from __future__ import annotations


def use_triton_entmax(x, alpha_tensor) -> bool:
    return False


def use_triton_attention(q, k, v, attn_mask, dropout_p, is_causal, scale, alpha, head_alpha,
                         dropout_seed) -> bool:
    return False
