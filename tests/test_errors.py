"""Bad input to the eager functions raises ValueError / TypeError naming the argument and value.

Tensors on another device use the ``meta`` device, so these run without a GPU.
"""

import math

import pytest
import torch

import adasplash_compile as ac


def _qkv(B=2, Hq=4, Hkv=4, Nq=5, Nk=6, D=8):
    return torch.randn(B, Hq, Nq, D), torch.randn(B, Hkv, Nk, D), torch.randn(B, Hkv, Nk, D)


Q, K, V = _qkv()
X = torch.randn(3, 4, 5)

ATTENTION_ERRORS = [
    # (case, kwargs overriding query/key/value/..., error type, message pattern)
    ("query rank", dict(query=torch.randn(4, 5, 8)), ValueError, r"query must be 4-D .*got shape \(4, 5, 8\)"),
    ("key rank", dict(key=torch.randn(2, 4, 6, 8, 1)), ValueError, r"key must be 4-D .*\(2, 4, 6, 8, 1\)"),
    ("value rank", dict(value=torch.randn(2, 4, 6)), ValueError, r"value must be 4-D .*\(2, 4, 6\)"),
    ("batch", dict(key=torch.randn(3, 4, 6, 8), value=torch.randn(3, 4, 6, 8)), ValueError,
     r"batch sizes differ: query 2, key 3, value 3"),
    ("head_dim", dict(key=torch.randn(2, 4, 6, 7)), ValueError, r"key head_dim 7 must equal query head_dim 8"),
    ("key vs value", dict(value=torch.randn(2, 4, 5, 8)), ValueError,
     r"key shape \(2, 4, 6, 8\) and value shape \(2, 4, 5, 8\)"),
    ("no keys", dict(key=torch.randn(2, 4, 0, 8), value=torch.randn(2, 4, 0, 8)), ValueError,
     r"at least one key, got key shape \(2, 4, 0, 8\)"),
    ("gqa without flag", dict(key=torch.randn(2, 2, 6, 8), value=torch.randn(2, 2, 6, 8)), ValueError,
     r"query has 4 heads and key/value 2: pass enable_gqa=True"),
    ("heads not a multiple", dict(key=torch.randn(2, 3, 6, 8), value=torch.randn(2, 3, 6, 8), enable_gqa=True),
     ValueError, r"query heads \(4\) must be a multiple of key/value heads \(3\)"),
    ("alpha = 1", dict(alpha=1.0), ValueError, r"alpha must be > 1 .*got 1.0"),
    ("alpha < 1", dict(alpha=0.5), ValueError, r"alpha must be > 1 .*got 0.5"),
    ("alpha nan", dict(alpha=math.nan), ValueError, r"alpha must be > 1 .*got nan"),
    ("alpha inf", dict(alpha=math.inf), ValueError, r"alpha must be finite, got inf"),
    ("alpha str", dict(alpha="1.5"), TypeError, r"alpha must be a float > 1 or a tensor, got str"),
    ("alpha bool", dict(alpha=True), TypeError, r"alpha must be a float > 1 or a tensor, got bool"),
    ("alpha shape", dict(alpha=torch.full((2,), 1.5)), ValueError,
     r"alpha as a tensor must have shape \(4,\) .*got shape \(2,\)"),
    ("alpha 0-d", dict(alpha=torch.tensor(1.5)), ValueError, r"alpha as a tensor must have shape \(4,\).*\(\)"),
    ("alpha tensor <= 1", dict(alpha=torch.tensor([1.5, 1.0, 2.0, 1.2])), ValueError,
     r"alpha must be finite and > 1 everywhere, got value 1.0"),
    ("alpha tensor nan", dict(alpha=torch.tensor([1.5, 2.0, math.nan, 1.2])), ValueError,
     r"alpha must be finite and > 1 everywhere, got value nan"),
    ("alpha tensor inf", dict(alpha=torch.tensor([1.5, math.inf, 2.0, 1.2])), ValueError,
     r"alpha must be finite and > 1 everywhere, got value inf"),
    ("alpha int tensor", dict(alpha=torch.tensor([2, 2, 2, 2])), TypeError,
     r"alpha must be a float or a floating tensor, got a torch.int64 tensor"),
    ("mask not broadcast", dict(attn_mask=torch.ones(5, 7, dtype=torch.bool)), ValueError,
     r"attn_mask of shape \(5, 7\) does not broadcast to .* \(2, 4, 5, 6\)"),
    ("mask heads", dict(attn_mask=torch.zeros(2, 3, 5, 6)), ValueError, r"attn_mask of shape \(2, 3, 5, 6\)"),
    ("mask rank", dict(attn_mask=torch.zeros(1, 2, 4, 5, 6)), ValueError, r"attn_mask of shape \(1, 2, 4, 5, 6\)"),
    ("mask int", dict(attn_mask=torch.ones(5, 6, dtype=torch.int64)), TypeError,
     r"attn_mask must be bool .* or floating .*got torch.int64"),
    ("mask uint8", dict(attn_mask=torch.ones(5, 6, dtype=torch.uint8)), TypeError, r"attn_mask .*got torch.uint8"),
    ("mask list", dict(attn_mask=[[True] * 6] * 5), TypeError, r"attn_mask must be a tensor or None, got list"),
    ("key on meta", dict(key=K.to("meta")), ValueError, r"one device, got query on cpu, key on meta"),
    ("mask on meta", dict(attn_mask=torch.zeros(5, 6, device="meta")), ValueError, r"attn_mask on meta"),
    ("alpha on meta", dict(alpha=torch.full((4,), 1.5, device="meta")), ValueError, r"alpha on meta"),
    ("int query", dict(query=Q.to(torch.int64)), TypeError, r"query must have a floating dtype .*got torch.int64"),
    ("int key", dict(key=K.to(torch.int32)), TypeError, r"key must have a floating dtype .*got torch.int32"),
    ("complex value", dict(value=V.to(torch.complex64)), TypeError, r"value must have a floating dtype .*complex64"),
    ("mixed dtypes", dict(key=K.double()), TypeError, r"share a dtype, got torch.float32, torch.float64"),
    ("not a tensor", dict(query=Q.tolist()), TypeError, r"query must be a torch.Tensor, got list"),
    ("dropout 1", dict(dropout_p=1.0), ValueError, r"dropout_p must be a float in \[0, 1\), got 1.0"),
    ("dropout < 0", dict(dropout_p=-0.1), ValueError, r"dropout_p must be a float in \[0, 1\), got -0.1"),
    ("dropout nan", dict(dropout_p=math.nan), ValueError, r"dropout_p .*got nan"),
    ("dropout str", dict(dropout_p="0.1"), ValueError, r"dropout_p .*got 0.1"),
    ("is_causal int", dict(is_causal=1), TypeError, r"is_causal must be a bool, got 1"),
    ("scale nan", dict(scale=math.nan), ValueError, r"scale must be None or a finite float, got nan"),
    ("scale tensor", dict(scale=torch.tensor(0.5)), ValueError, r"scale must be None or a finite float, got tensor"),
]


@pytest.mark.parametrize("case, kwargs, error, match", ATTENTION_ERRORS, ids=[c[0] for c in ATTENTION_ERRORS])
def test_entmax_attention_rejects(case, kwargs, error, match):
    args = dict(query=Q, key=K, value=V) | kwargs
    with pytest.raises(error, match=match):
        ac.entmax_attention(**args)


ENTMAX_ERRORS = [
    ("int x", dict(x=X.to(torch.int64)), TypeError, r"x must have a floating dtype .*got torch.int64"),
    ("bool x", dict(x=X > 0), TypeError, r"x must have a floating dtype .*got torch.bool"),
    ("x not a tensor", dict(x=[1.0, 2.0]), TypeError, r"x must be a torch.Tensor, got list"),
    ("0-d x", dict(x=torch.tensor(1.0)), ValueError, r"x must have at least one dimension"),
    ("empty dim", dict(x=torch.randn(3, 0), dim=1), ValueError, r"x must not be empty along dim 1, got shape \(3, 0\)"),
    ("dim out of range", dict(dim=3), ValueError, r"dim must be an int in \[-3, 3\), got 3"),
    ("dim negative", dict(dim=-4), ValueError, r"dim must be an int in \[-3, 3\), got -4"),
    ("dim float", dict(dim=1.0), ValueError, r"dim must be an int .*got 1.0"),
    ("alpha = 1", dict(alpha=1), ValueError, r"alpha must be > 1 .*got 1"),
    ("alpha nan", dict(alpha=math.nan), ValueError, r"alpha must be > 1 .*got nan"),
    ("alpha inf", dict(alpha=math.inf), ValueError, r"alpha must be finite, got inf"),
    ("alpha tensor < 1", dict(alpha=torch.tensor([[1.5], [0.5], [2.0]])), ValueError,
     r"alpha must be finite and > 1 everywhere, got value 0.5"),
    ("alpha tensor inf", dict(alpha=torch.tensor(math.inf)), ValueError, r"alpha must be finite and > 1 .*got value inf"),
    ("alpha shape", dict(alpha=torch.full((5,), 1.5)), ValueError,
     r"alpha of shape \(5,\) does not broadcast to .*\(3, 4\)"),
    ("alpha too many dims", dict(alpha=torch.full((1, 3, 4), 1.5)), ValueError, r"alpha of shape \(1, 3, 4\)"),
    ("alpha int tensor", dict(alpha=torch.tensor(2)), TypeError, r"alpha must be a float or a floating tensor"),
    ("alpha on meta", dict(alpha=torch.full((4,), 1.5, device="meta")), ValueError, r"alpha on meta"),
]


@pytest.mark.parametrize("case, kwargs, error, match", ENTMAX_ERRORS, ids=[c[0] for c in ENTMAX_ERRORS])
def test_entmax_rejects(case, kwargs, error, match):
    args = dict(x=X, alpha=1.5, dim=-1) | kwargs
    with pytest.raises(error, match=match):
        ac.entmax(**args)


def test_valid_edge_values_are_accepted():
    """The boundaries just inside the valid ranges still compute."""
    out = ac.entmax_attention(Q, K, V, dropout_p=0.0, alpha=1 + 1e-3, scale=1, attn_mask=torch.zeros(6))
    assert torch.isfinite(out).all()
    assert torch.isfinite(ac.entmax(X, alpha=2, dim=0)).all()


def test_op_with_dropout_needs_a_seed():
    with pytest.raises(ValueError, match=r"dropout_p > 0 needs a dropout_seed tensor"):
        torch.ops.adasplash.entmax_attention(Q, K, V, None, 0.1, False, None, 1.5, None, None)
