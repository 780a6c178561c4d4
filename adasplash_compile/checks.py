"""Argument validation shared by the eager functions and the FX pass.

Every check raises ``ValueError`` / ``TypeError`` naming the argument and the value it got.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def check_float_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"{name} must have a floating dtype (float16, bfloat16, float32, float64), got {t.dtype}")


def check_alpha(alpha, expected_shape: Optional[tuple] = None, name: str = "alpha",
                broadcast_to: Optional[tuple] = None) -> None:
    """alpha is a float > 1, or a floating tensor of the expected shape with every value > 1."""
    if isinstance(alpha, torch.Tensor):
        if not alpha.is_floating_point():
            raise TypeError(f"{name} must be a float or a floating tensor, got a {alpha.dtype} tensor")
        if expected_shape is not None and tuple(alpha.shape) != tuple(expected_shape):
            raise ValueError(f"{name} as a tensor must have shape {tuple(expected_shape)} (one alpha per "
                             f"query head), got shape {tuple(alpha.shape)}")
        if broadcast_to is not None:
            shape = tuple(alpha.shape)
            fits = len(shape) <= len(broadcast_to) and all(
                a in (1, b) for a, b in zip(shape[::-1], broadcast_to[::-1]))
            if not fits:
                raise ValueError(f"{name} of shape {shape} does not broadcast to the input shape "
                                 f"without the entmax dim, {broadcast_to}")
        if not _compiling():
            bad = ~((alpha > 1) & torch.isfinite(alpha))  # also catches NaN
            if bool(bad.any()):
                raise ValueError(f"{name} must be finite and > 1 everywhere, got value "
                                 f"{alpha[bad].flatten()[0].item()}")
        return
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"{name} must be a float > 1 or a tensor, got {type(alpha).__name__}")
    if math.isnan(alpha) or alpha <= 1:
        raise ValueError(f"{name} must be > 1 (alpha = 1 is softmax; use it directly), got {alpha}")
    if math.isinf(alpha):
        raise ValueError(f"{name} must be finite, got {alpha}")


def check_same_device(**tensors) -> None:
    devices = {name: t.device for name, t in tensors.items() if isinstance(t, torch.Tensor)}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all tensors must be on one device, got {listed}")


def check_attention_args(q, k, v, attn_mask, dropout_p, is_causal, scale, alpha, enable_gqa) -> None:
    """Validate the arguments of ``entmax_attention`` (SDPA's signature plus alpha)."""
    for name, t in (("query", q), ("key", k), ("value", v)):
        check_float_tensor(name, t)
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, heads, length, head_dim), got shape {tuple(t.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"query, key and value must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    check_same_device(query=q, key=k, value=v, attn_mask=attn_mask,
                      alpha=alpha if isinstance(alpha, torch.Tensor) else None)
    B, Hq, Nq, D = q.shape
    if k.shape[0] != B or v.shape[0] != B:
        raise ValueError(f"batch sizes differ: query {B}, key {k.shape[0]}, value {v.shape[0]}")
    if k.shape[-1] != D:
        raise ValueError(f"key head_dim {k.shape[-1]} must equal query head_dim {D}")
    if k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise ValueError(f"key shape {tuple(k.shape)} and value shape {tuple(v.shape)} differ in heads or length")
    if k.shape[2] == 0:
        raise ValueError(f"key and value must hold at least one key, got key shape {tuple(k.shape)}")
    Hkv = k.shape[1]
    if Hkv != Hq:
        if not enable_gqa:
            raise ValueError(f"query has {Hq} heads and key/value {Hkv}: pass enable_gqa=True for "
                             f"grouped-query attention")
        if Hq % Hkv != 0:
            raise ValueError(f"query heads ({Hq}) must be a multiple of key/value heads ({Hkv})")
    if attn_mask is not None:
        check_mask(attn_mask, (B, Hq, Nq, k.shape[2]))
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not (0.0 <= dropout_p < 1.0):
        raise ValueError(f"dropout_p must be a float in [0, 1), got {dropout_p}")
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be a bool, got {is_causal!r}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale)):
        raise ValueError(f"scale must be None or a finite float, got {scale!r}")
    check_alpha(alpha, expected_shape=(Hq,))


def check_mask(attn_mask, target: tuple) -> None:
    """A bool or floating mask broadcastable to (B, Hq, Nq, Nk)."""
    if not isinstance(attn_mask, torch.Tensor):
        raise TypeError(f"attn_mask must be a tensor or None, got {type(attn_mask).__name__}")
    if attn_mask.dtype != torch.bool and attn_mask.dtype not in _FLOATS:
        raise TypeError(f"attn_mask must be bool (True = attend) or floating (added to the scores), "
                        f"got {attn_mask.dtype}")
    shape = tuple(attn_mask.shape)
    ok = len(shape) <= 4 and all(m in (1, t) for m, t in zip(shape[::-1], target[::-1]))
    if not ok:
        raise ValueError(f"attn_mask of shape {shape} does not broadcast to (batch, heads, "
                         f"query_len, key_len) = {target}")


def check_entmax_args(x, alpha: Union[float, torch.Tensor], dim: int) -> None:
    check_float_tensor("x", x)
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension, got a 0-d tensor")
    if isinstance(dim, bool) or not isinstance(dim, int) or not (-x.dim() <= dim < max(x.dim(), 1)):
        raise ValueError(f"dim must be an int in [{-x.dim()}, {x.dim()}), got {dim!r}")
    if x.shape[dim] == 0:
        raise ValueError(f"x must not be empty along dim {dim}, got shape {tuple(x.shape)}")
    rest = tuple(s for i, s in enumerate(x.shape) if i != dim % x.dim())
    if isinstance(alpha, torch.Tensor):
        check_same_device(x=x, alpha=alpha)
    check_alpha(alpha, broadcast_to=rest)
