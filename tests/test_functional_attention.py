"""``adasplash_compile.entmax_attention`` against dense float64 oracles, the entmax package and SDPA."""

import math

import entmax as entmax_pkg
import pytest
import torch
import torch.nn.functional as F

import adasplash_compile as ac

F64 = torch.float64


def _qkv(B=2, Hq=3, Nq=5, Nk=6, D=8, Hkv=None, Dv=None, dtype=F64, grad=False):
    Hkv = Hq if Hkv is None else Hkv
    q = torch.randn(B, Hq, Nq, D, dtype=F64) * 1.5
    k = torch.randn(B, Hkv, Nk, D, dtype=F64) * 1.5
    v = torch.randn(B, Hkv, Nk, D if Dv is None else Dv, dtype=F64)
    return tuple(t.to(dtype).requires_grad_(grad) for t in (q, k, v))


def _grads(out, inputs, g):
    return torch.autograd.grad(out, inputs, g)


def _package_normalizer(s, alpha):
    """Differentiable entmax over the keys from the entmax package (finite rows only)."""
    return entmax_pkg.entmax_bisect(s, alpha, dim=-1, n_iter=100)


@pytest.mark.parametrize("alpha", [1.25, 1.5, 2.0, 2.5])
@pytest.mark.parametrize("Nq, Nk", [(5, 7), (8, 8), (9, 4), (1, 3)])
def test_matches_dense_oracle(oracle, alpha, Nq, Nk):
    q, k, v = _qkv(Nq=Nq, Nk=Nk)
    out = ac.entmax_attention(q, k, v, alpha=alpha)
    torch.testing.assert_close(out, oracle.attention(q, k, v, alpha=alpha), rtol=1e-9, atol=1e-11)


def test_value_head_dim_may_differ(oracle):
    q, k, v = _qkv(D=8, Dv=5)
    out = ac.entmax_attention(q, k, v)
    assert out.shape == (2, 3, 5, 5)
    torch.testing.assert_close(out, oracle.attention(q, k, v), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("scale", [0.3, 2.0, 1])
def test_scale(oracle, scale):
    q, k, v = _qkv()
    out = ac.entmax_attention(q, k, v, scale=scale, alpha=1.7)
    torch.testing.assert_close(out, oracle.attention(q, k, v, scale=scale, alpha=1.7), rtol=1e-9, atol=1e-11)


# Every way a mask can broadcast to (B, Hq, Nq, Nk) = (2, 3, 5, 6).
MASK_SHAPES = [(6,), (1, 6), (5, 6), (5, 1), (3, 1, 6), (3, 5, 6), (1, 1, 1, 1), (2, 1, 1, 6),
               (2, 1, 5, 6), (1, 3, 5, 1), (2, 3, 5, 6)]


def _bool_mask(shape):
    return torch.rand(shape) > 0.3


def _float_mask(shape):
    m = torch.randn(shape, dtype=F64) * 2
    return m.masked_fill(torch.rand(shape) < 0.2, -math.inf)


@pytest.mark.parametrize("shape", MASK_SHAPES)
@pytest.mark.parametrize("make_mask", [_bool_mask, _float_mask], ids=["bool", "float"])
def test_mask_broadcast_shapes(oracle, shape, make_mask):
    q, k, v = _qkv()
    mask = make_mask(shape)
    out = ac.entmax_attention(q, k, v, attn_mask=mask, alpha=1.5)
    torch.testing.assert_close(out, oracle.attention(q, k, v, attn_mask=mask), rtol=1e-9, atol=1e-11)


def test_bool_mask_agrees_with_sdpa_masking():
    """Bool True = attend, as SDPA: alpha near 1 reproduces SDPA with the same mask."""
    q, k, v = _qkv()
    mask = _bool_mask((2, 1, 5, 6))
    mask[..., 0] = True  # no fully masked row, where SDPA gives NaN
    out = ac.entmax_attention(q, k, v, attn_mask=mask, alpha=1.0001)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), rtol=0, atol=1e-3)


@pytest.mark.parametrize("Nq, Nk", [(4, 7), (7, 4), (6, 6), (1, 5), (5, 1)])
@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.3])
def test_causal_top_left(oracle, Nq, Nk, alpha):
    """is_causal keeps key j for query i iff j <= i: torch.ones(Nq, Nk).tril(), as SDPA."""
    q, k, v = _qkv(Nq=Nq, Nk=Nk)
    out = ac.entmax_attention(q, k, v, is_causal=True, alpha=alpha)
    torch.testing.assert_close(out, oracle.attention(q, k, v, is_causal=True, alpha=alpha), rtol=1e-9, atol=1e-11)
    tril = torch.ones(Nq, Nk).tril().bool()
    torch.testing.assert_close(out, ac.entmax_attention(q, k, v, attn_mask=tril, alpha=alpha), rtol=0, atol=0)


@pytest.mark.parametrize("Nq, Nk", [(4, 7), (7, 4)])
def test_causal_placement_matches_sdpa(Nq, Nk):
    q, k, v = _qkv(Nq=Nq, Nk=Nk)
    out = ac.entmax_attention(q, k, v, is_causal=True, alpha=1.0001)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), rtol=0, atol=1e-3)


def test_causal_and_mask_combine(oracle):
    q, k, v = _qkv(Nq=6, Nk=6)
    mask = _float_mask((1, 3, 6, 6))
    out = ac.entmax_attention(q, k, v, attn_mask=mask, is_causal=True)
    torch.testing.assert_close(out, oracle.attention(q, k, v, attn_mask=mask, is_causal=True), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("Hkv", [1, 2, 3])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mask_shape", [None, (1, 6, 5, 7), (6, 1, 7)])
def test_gqa_equals_repeat_interleave(oracle, Hkv, causal, mask_shape):
    """Query head h uses kv head h // (Hq // Hkv): values and gradients as with repeated k, v."""
    q, k, v = _qkv(Hq=6, Hkv=Hkv, Nq=5, Nk=7, grad=True)
    alpha = torch.linspace(1.2, 2.4, 6, dtype=F64, requires_grad=True)
    mask = None if mask_shape is None else torch.randn(mask_shape, dtype=F64, requires_grad=True)
    args = dict(attn_mask=mask, is_causal=causal, alpha=alpha)
    out = ac.entmax_attention(q, k, v, enable_gqa=True, **args)
    G = 6 // Hkv
    expanded = ac.entmax_attention(q, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1), **args)
    torch.testing.assert_close(out, expanded, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, oracle.attention(q, k, v, **args), rtol=1e-9, atol=1e-11)
    g = torch.randn_like(out)
    inputs = (q, k, v, alpha) + (() if mask is None else (mask,))
    torch.testing.assert_close(_grads(out, inputs, g), _grads(expanded, inputs, g), rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("Hkv", [4, 2])
def test_per_head_alpha_equals_one_call_per_head(oracle, Hkv):
    q, k, v = _qkv(Hq=4, Hkv=Hkv)
    alpha = torch.tensor([1.1, 1.5, 2.0, 2.9], dtype=F64)
    out = ac.entmax_attention(q, k, v, alpha=alpha, enable_gqa=True)
    torch.testing.assert_close(out, oracle.attention(q, k, v, alpha=alpha), rtol=1e-9, atol=1e-11)
    for h in range(4):
        kv = h // (4 // Hkv)
        head = ac.entmax_attention(q[:, h:h + 1], k[:, kv:kv + 1], v[:, kv:kv + 1], alpha=float(alpha[h]))
        torch.testing.assert_close(out[:, h:h + 1], head, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("Hkv", [3, 1])
def test_gradients_match_autograd_of_dense_oracle(oracle, is_causal, Hkv):
    """q, k, v, per-head alpha and float-mask gradients against autograd through entmax_bisect."""
    q, k, v = _qkv(Hq=3, Hkv=Hkv, Nq=6, Nk=6, grad=True)
    alpha = torch.tensor([1.3, 1.5, 2.2], dtype=F64, requires_grad=True)
    mask = (torch.randn(1, 3, 6, 6, dtype=F64)).requires_grad_()
    args = dict(attn_mask=mask, is_causal=is_causal, alpha=alpha)
    out = ac.entmax_attention(q, k, v, enable_gqa=True, **args)
    expected = oracle.attention(q, k, v, normalize=_package_normalizer, **args)
    torch.testing.assert_close(out, expected, rtol=1e-8, atol=1e-10)
    g = torch.randn_like(out)
    inputs = (q, k, v, alpha, mask)
    torch.testing.assert_close(_grads(out, inputs, g), _grads(expected, inputs, g), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("alpha", [1.01, 1.001])
def test_alpha_near_one_approaches_sdpa(alpha):
    """entmax -> softmax as alpha -> 1, with an O(alpha - 1) gap."""
    q, k, v = _qkv(Nq=7, Nk=5)
    mask = torch.randn(7, 5, dtype=F64)
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    gap = (ac.entmax_attention(q, k, v, attn_mask=mask, alpha=alpha) - sdpa).abs().max().item()
    assert gap < 5 * (alpha - 1)


def test_alpha_two_is_sparsemax_attention():
    q, k, v = _qkv(grad=True)
    out = ac.entmax_attention(q, k, v, alpha=2.0)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    expected = entmax_pkg.sparsemax(scores, dim=-1) @ v
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-11)
    g = torch.randn_like(out)
    torch.testing.assert_close(_grads(out, (q, k, v), g), _grads(expected, (q, k, v), g), rtol=1e-8, atol=1e-10)


def test_alpha_one_point_five_is_entmax15_attention():
    q, k, v = _qkv(grad=True)
    out = ac.entmax_attention(q, k, v)
    expected = entmax_pkg.entmax15(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-11)
    g = torch.randn_like(out)
    torch.testing.assert_close(_grads(out, (q, k, v), g), _grads(expected, (q, k, v), g), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.7])
@pytest.mark.parametrize("how", ["bool", "float-inf", "causal+bool"])
def test_fully_masked_rows_give_zero_and_zero_finite_gradients(oracle, alpha, how):
    q, k, v = _qkv(Nq=5, Nk=6, grad=True)
    alpha_t = torch.full((3,), alpha, dtype=F64, requires_grad=True)
    dead = [1, 3]
    if how == "float-inf":
        mask = torch.randn(2, 3, 5, 6, dtype=F64)
        mask[:, :, dead] = -math.inf
        mask.requires_grad_()
    else:
        mask = torch.rand(2, 3, 5, 6) > 0.2
        mask[..., 0] = True
        mask[:, :, dead] = False
    causal = how.startswith("causal")
    out = ac.entmax_attention(q, k, v, attn_mask=mask, is_causal=causal, alpha=alpha_t)
    torch.testing.assert_close(out, oracle.attention(q, k, v, attn_mask=mask, is_causal=causal, alpha=alpha_t),
                               rtol=1e-9, atol=1e-11)
    assert (out[:, :, dead] == 0).all()
    inputs = (q, k, v, alpha_t) + ((mask,) if mask.requires_grad else ())
    grads = _grads(out, inputs, torch.randn_like(out))
    assert all(torch.isfinite(g).all() for g in grads)
    assert (grads[0][:, :, dead] == 0).all()
    if mask.requires_grad:
        assert (grads[4][:, :, dead] == 0).all()


def _extreme_inputs(dtype):
    """Half-precision q, k, v with large logits and masks holding -1e4 and finfo(dtype).min."""
    q, k, v = _qkv(Nq=6, Nk=9, D=16)
    q[:, :, 0] *= 12  # scores of several hundreds
    mask = torch.randn(6, 9, dtype=F64)
    mask[1, :5] = -1e4
    mask[2, 1::2] = torch.finfo(dtype).min
    mask[3, :] = -1e4  # every key far below zero: tau must stay relative to the row max
    mask[4, :-1] = torch.finfo(dtype).min
    return (*(t.to(dtype) for t in (q, k, v)), mask.to(dtype))


@pytest.mark.parametrize("dtype, atol", [(torch.float16, 5e-3), (torch.bfloat16, 4e-2)])
@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.3])
def test_half_precision_extreme_logits(oracle, dtype, atol, alpha):
    q, k, v, mask = _extreme_inputs(dtype)
    q.requires_grad_()
    out = ac.entmax_attention(q, k, v, attn_mask=mask, alpha=alpha)
    assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), oracle.attention(q, k, v, attn_mask=mask, alpha=alpha),
                               rtol=0, atol=atol)
    (out.float() * torch.randn(out.shape)).sum().backward()
    assert torch.isfinite(q.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_of_only_finfo_min_mask_is_uniform(dtype):
    """A finite (finfo.min) mask on a whole row excludes nothing: all scores tie, p is uniform."""
    q, k, v = _qkv(Nq=3, Nk=5, dtype=dtype)
    mask = torch.zeros(3, 5, dtype=dtype)
    mask[1] = torch.finfo(dtype).min
    out = ac.entmax_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out[:, :, 1], v.mean(2), rtol=0, atol=2e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_mixed_dtypes_gradients(oracle, dtype):
    """Low-precision q, k, v with a float64 alpha and a float32 mask: gradients in each input's
    dtype, close to autograd of the float64 oracle on the same values."""
    q, k, v = _qkv(Hq=2, Nq=6, Nk=7, dtype=dtype, grad=True)
    alpha = torch.tensor([1.3, 1.8], dtype=F64, requires_grad=True)
    mask = torch.randn(6, 7, requires_grad=True)
    out = ac.entmax_attention(q, k, v, attn_mask=mask, alpha=alpha)
    exact = [t.detach().double().requires_grad_() for t in (q, k, v, alpha, mask)]
    expected = oracle.attention(*exact[:3], attn_mask=exact[4], alpha=exact[3], normalize=_package_normalizer)
    g = torch.randn(out.shape, dtype=F64)
    got = torch.autograd.grad(out, (q, k, v, alpha, mask), g.to(dtype))
    want = torch.autograd.grad(expected, exact, g)
    assert [t.dtype for t in got] == [dtype] * 3 + [F64, torch.float32]
    tol = {torch.float16: 2e-2, torch.bfloat16: 1e-1, torch.float32: 1e-4}[dtype]
    torch.testing.assert_close([t.double() for t in got], want, rtol=tol, atol=tol)
