"""Sites the pass cannot rewrite exactly are left as they are, with the reason in the report,
and the compiled function still computes exactly what it computed before (softmax)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import adasplash_compile as ac
from compile_helpers import aot, fresh_compile  # noqa: F401

B, H, N, D = 2, 4, 8, 16


def qkv():
    return [torch.randn(B, H, N, D) for _ in range(3)]


def scores(q, k):
    return q @ k.transpose(-2, -1) * 0.25


def returns_weights(q, k, v):
    p = scores(q, k).softmax(-1)
    return p @ v, p


def head_mask(q, k, v):
    p = scores(q, k).softmax(-1) * torch.tensor([1.0, 0.0, 1.0, 1.0]).view(1, H, 1, 1)
    return p @ v


def softmax_over_queries(q, k, v):
    return scores(q, k).softmax(-2) @ v


def learned_temperature(q, k, v, t):
    return (q @ k.transpose(-2, -1) * t).softmax(-1) @ v


def softcap(q, k, v):
    return (torch.tanh(scores(q, k) / 5.0) * 5.0).softmax(-1) @ v


def classifier_softmax(x, w):
    return F.linear(x, w).softmax(-1)


def small_fill_value(q, k, v):
    s = scores(q, k).masked_fill(torch.ones(N, N, dtype=torch.bool).triu(1), -10.0)
    return s.softmax(-1) @ v


def mask_scaled_after_adding(q, k, v, mask):
    return ((q @ k.transpose(-2, -1) + mask) * 0.25).softmax(-1) @ v


def finite_fill_and_float_mask(q, k, v, mask):
    s = scores(q, k).masked_fill(torch.ones(N, N, dtype=torch.bool).triu(1), -1e9) + mask
    return s.softmax(-1) @ v


def scores_also_returned(q, k, v):
    s = scores(q, k)
    return s.softmax(-1) @ v, s


def two_dropouts(q, k, v):
    p = F.dropout(F.dropout(scores(q, k).softmax(-1), 0.1, True), 0.1, True)
    return p @ v


def dropout_with_finite_fill(q, k, v):
    s = scores(q, k).masked_fill(torch.ones(N, N, dtype=torch.bool).triu(1), -1e9)
    return F.dropout(s.softmax(-1), 0.1, True) @ v


def batch_broadcast_key(q, k, v):
    return scores(q, k[:1]).softmax(-1) @ v


def values_in_another_dtype(q, k, v):
    return scores(q, k).softmax(-1).double() @ v.double()


def entmax_alpha_per_query(q, k, v):
    alpha = torch.linspace(1.2, 2.0, N).view(N)  # one alpha per query row, not per head
    return ac.entmax(scores(q, k), alpha=alpha) @ v


def mha_weights_used(x, mha):
    out, weights = mha(x, x, x)
    return out, weights


CASES = {
    "returns_weights": (returns_weights, qkv, "the attention weights have another use"),
    "head_mask": (head_mask, qkv, "multiplied by a tensor (a head mask?)"),
    "softmax_over_queries": (softmax_over_queries, qkv, "softmax over dim -2, not the last (key) dim"),
    "learned_temperature": (learned_temperature, lambda: qkv() + [torch.tensor(0.3)],
                            "scaled by a tensor"),
    "softcap": (softcap, qkv, "the scores pass through tanh() before the softmax"),
    "classifier_softmax": (classifier_softmax, lambda: [torch.randn(B, N, D), torch.randn(5, D)],
                           "not from a q @ k^T product"),
    "small_fill_value": (small_fill_value, qkv, "filled with -10"),
    "mask_scaled_after_adding": (mask_scaled_after_adding, lambda: qkv() + [torch.randn(N, N)],
                                 "scaled after a float mask is added"),
    "finite_fill_and_float_mask": (finite_fill_and_float_mask, lambda: qkv() + [torch.randn(N, N)],
                                   "a finite fill (-1e+09) combined with other mask terms"),
    "scores_also_returned": (scores_also_returned, qkv, "the scores are also used elsewhere"),
    "two_dropouts": (two_dropouts, qkv, "two dropouts"),
    "dropout_with_finite_fill": (dropout_with_finite_fill, qkv, "dropout with a finite fill value"),
    "batch_broadcast_key": (batch_broadcast_key, qkv, "batch broadcasting"),
    "values_in_another_dtype": (values_in_another_dtype, qkv, "dtypes differ"),
    "entmax_alpha_per_query": (entmax_alpha_per_query, qkv, "is not one alpha per head"),
}


@pytest.mark.parametrize("name", CASES)
def test_left_alone_with_reason_and_unchanged(name):
    fn, make, reason = CASES[name]
    inputs = make()
    report = ac.explain(fn, *inputs)
    (site,) = report.sites
    assert not site.rewritten
    assert reason in site.reason, site.reason
    assert "entmax_attention" not in report.graphs[0].after
    torch._dynamo.reset()
    if "dropout" in name:
        torch.manual_seed(0)
        expected = fn(*inputs)
        torch.manual_seed(0)
    else:
        expected = fn(*inputs)
    actual = torch.compile(fn, backend=aot())(*inputs)
    for a, e in zip(*(x if isinstance(x, tuple) else (x,) for x in (actual, expected))):
        torch.testing.assert_close(a, e)


def test_multihead_attention_with_used_weights_is_left_alone():
    mha = nn.MultiheadAttention(D, H, batch_first=True)
    x = torch.randn(B, N, D)
    report = ac.explain(mha_weights_used, x, mha)
    (site,) = report.sites
    assert (site.pattern, site.rewritten) == ("multi_head_attention_forward", False)
    assert "need_weights=True and the attention weights are used" in site.reason
    torch._dynamo.reset()
    out, weights = torch.compile(mha_weights_used, backend=aot())(x, mha)
    ref_out, ref_weights = mha_weights_used(x, mha)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(weights, ref_weights)
