"""float64 ``gradcheck`` of ``adasplash_compile.entmax_attention``: q, k, v, per-head alpha, float mask.

Finite differences of the forward check the registered backward op; shapes are tiny on purpose.
"""

import math

import pytest
import torch
from torch.autograd import gradcheck

import adasplash_compile as ac

F64 = torch.float64


def _mask(kind, shape):
    if kind == "float":
        return torch.randn(shape, dtype=F64, requires_grad=True)
    if kind == "float-inf":
        m = torch.randn(shape, dtype=F64)
        m[..., 0, 1] = -math.inf
        return m.requires_grad_()
    if kind == "bool":
        m = torch.rand(shape) > 0.3
        m[..., 0] = True
        return m
    return None


CASES = [
    # Nq, Nk, Hq, Hkv, is_causal, alpha, mask kind, mask shape
    (3, 4, 2, 2, False, "per-head", "float", (1, 2, 3, 4)),
    (4, 3, 2, 1, True, "per-head", "float", (4, 3)),
    (3, 5, 2, 2, True, 1.5, "bool", (3, 5)),
    (2, 4, 4, 2, False, 2.0, None, None),
    (3, 3, 2, 1, False, 1.7, "float-inf", (1, 1, 3, 3)),
    (2, 5, 2, 2, True, "per-head", "float", (2, 1, 5)),
]


@pytest.mark.parametrize("Nq, Nk, Hq, Hkv, is_causal, alpha, mask_kind, mask_shape", CASES)
def test_gradcheck_entmax_attention(Nq, Nk, Hq, Hkv, is_causal, alpha, mask_kind, mask_shape):
    q = torch.randn(1, Hq, Nq, 3, dtype=F64, requires_grad=True)
    k = torch.randn(1, Hkv, Nk, 3, dtype=F64, requires_grad=True)
    v = torch.randn(1, Hkv, Nk, 2, dtype=F64, requires_grad=True)
    mask = _mask(mask_kind, mask_shape)
    if alpha == "per-head":
        alpha = (1.2 + 1.3 * torch.rand(Hq, dtype=F64)).requires_grad_()
    inputs = [q, k, v] + [t for t in (mask, alpha) if isinstance(t, torch.Tensor) and t.requires_grad]

    def f(q, k, v, *rest):
        it = iter(rest)
        m = next(it) if mask is not None and mask.requires_grad else mask
        a = next(it) if isinstance(alpha, torch.Tensor) else alpha
        return ac.entmax_attention(q, k, v, attn_mask=m, is_causal=is_causal, scale=0.8, alpha=a,
                                   enable_gqa=Hq != Hkv)

    assert gradcheck(f, tuple(inputs))
