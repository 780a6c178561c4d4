"""The reference processes query rows in blocks: results must not depend on the block size.

``reference._BLOCK_ELEMENTS`` is made tiny so that every call below runs several query blocks
of ``TILE`` rows (the smallest block), then compared with the dense float64 oracle.
"""

import math

import entmax as entmax_pkg
import pytest
import torch

import adasplash_compile as ac
from lowering import reference

F64 = torch.float64
B, HQ, NQ, NK, D = 1, 4, 150, 21, 4  # NQ spans three blocks of TILE = 64 rows


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(reference, "_BLOCK_ELEMENTS", 1)
    q = torch.empty(B, HQ, NQ, D)
    kv = torch.empty(B, HQ, NK, D)
    problem = reference._Problem(q, kv, kv, None, False, None, 1.5, None)
    assert len(list(problem.blocks())) == 3


def _inputs(Hkv=HQ, grad=False):
    q = torch.randn(B, HQ, NQ, D, dtype=F64) * 2
    k = torch.randn(B, Hkv, NK, D, dtype=F64) * 2
    v = torch.randn(B, Hkv, NK, D, dtype=F64)
    return tuple(t.requires_grad_(grad) for t in (q, k, v))


def _row_mask():
    """A float mask that differs on every query row, with -inf entries and one dead row per block."""
    m = torch.randn(1, HQ, NQ, NK, dtype=F64)
    m = m.masked_fill(torch.rand(m.shape) < 0.15, -math.inf)
    m[..., [3, 70, 140], :] = -math.inf
    return m


@pytest.mark.parametrize("mask_kind", ["rows", "broadcast-row", "bool", None])
@pytest.mark.parametrize("is_causal", [False, True])
def test_blocked_forward_matches_oracle(oracle, small_blocks, mask_kind, is_causal):
    q, k, v = _inputs(Hkv=2)
    alpha = torch.tensor([1.3, 1.5, 2.0, 2.4], dtype=F64)
    mask = {"rows": _row_mask(), "broadcast-row": torch.randn(1, HQ, 1, NK, dtype=F64),
            "bool": torch.rand(NQ, NK) > 0.4, None: None}[mask_kind]
    out = ac.entmax_attention(q, k, v, attn_mask=mask, is_causal=is_causal, alpha=alpha, enable_gqa=True)
    expected = oracle.attention(q, k, v, attn_mask=mask, is_causal=is_causal, alpha=alpha)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("mask_shape", [(1, HQ, NQ, NK), (NQ, 1), (HQ, 1, NK)])
def test_blocked_gradients_match_autograd_of_oracle(oracle, small_blocks, mask_shape):
    """Gradients accumulated over blocks (dk, dv, dalpha, a broadcast dmask) against autograd."""
    q, k, v = _inputs(Hkv=2, grad=True)
    alpha = torch.tensor([1.3, 1.5, 2.0, 2.4], dtype=F64, requires_grad=True)
    mask = torch.randn(mask_shape, dtype=F64, requires_grad=True)
    args = dict(attn_mask=mask, is_causal=True, alpha=alpha)
    out = ac.entmax_attention(q, k, v, enable_gqa=True, **args)
    expected = oracle.attention(q, k, v, **args,
                                normalize=lambda s, a: entmax_pkg.entmax_bisect(s, a, dim=-1, n_iter=100))
    torch.testing.assert_close(out, expected, rtol=1e-8, atol=1e-10)
    g = torch.randn_like(out)
    inputs = (q, k, v, alpha, mask)
    got = torch.autograd.grad(out, inputs, g)
    want = torch.autograd.grad(expected, inputs, g)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


def test_blocked_dropout_gradcheck(small_blocks):
    """Dropout masks are regenerated per block in the backward: finite differences agree."""
    q = torch.randn(1, 1, NQ, 2, dtype=F64, requires_grad=True)
    k = torch.randn(1, 1, 5, 2, dtype=F64, requires_grad=True)
    v = torch.randn(1, 1, 5, 2, dtype=F64, requires_grad=True)
    seed = torch.tensor([1234])

    def f(q, k, v):
        return torch.ops.adasplash.entmax_attention(q, k, v, None, 0.3, True, None, 1.5, None, seed)[0]

    assert torch.autograd.gradcheck(f, (q, k, v), fast_mode=True)
