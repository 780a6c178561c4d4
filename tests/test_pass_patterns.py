"""Every attention spelling the pass recognises: rewritten, and equal to the same function run
eagerly with its softmax replaced by ``adasplash_compile.entmax`` (outputs and gradients).

Each hand-written pattern takes its normaliser as an argument: compiled as written (softmax),
the reference passes ``entmax`` instead, so the reference is the function itself, run eagerly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import expecttest
import pytest
import torch
import torch.nn.functional as F

import adasplash_compile as ac
from compile_helpers import aot, assert_close, assert_differs, fresh_compile, graph_text  # noqa: F401

B, H, HKV, N, D = 2, 4, 2, 8, 16


def entmax15(s, dim=-1, dtype=None):
    """entmax-1.5 with softmax's signature."""
    return ac.entmax(s if dtype is None else s.to(dtype), alpha=1.5, dim=dim)


def qkv(*, heads_kv=H, n_kv=N, dtype=torch.float32, layout="bhnd"):
    shape_q, shape_kv = (B, H, N, D), (B, heads_kv, n_kv, D)
    if layout == "bnhd":
        shape_q, shape_kv = (B, N, H, D), (B, n_kv, heads_kv, D)
    return [torch.randn(s, dtype=dtype) * 2 for s in (shape_q, shape_kv, shape_kv)]


def repeat_kv(x, n_rep):
    """Hugging Face's repeat_kv."""
    b, h, s, d = x.shape
    return x[:, :, None, :, :].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


# -- hand-written attention, one spelling per function --------------------------------------------

def matmul_scale_float_mask(q, k, v, mask, softmax=F.softmax):
    s = torch.matmul(q, k.transpose(2, 3)) * 0.3
    s = s + mask
    p = softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)
    p = F.dropout(p, p=0.1, training=False)
    return torch.matmul(p, v)


def at_mT_div_masked_fill(q, k, v, keep, softmax=lambda s, dim: s.softmax(dim)):
    s = (q @ k.mT) / math.sqrt(q.size(-1))
    s = s.masked_fill(~keep, float("-inf"))
    return softmax(s, -1) @ v


def bmm_where(q, k, v, keep, softmax=torch.softmax):
    q, k, v = (t.flatten(0, 1) for t in (q, k, v))  # (B*H, N, D)
    s = torch.bmm(q, k.transpose(1, 2)) * 0.25
    s = torch.where(keep, s, float("-inf"))
    return torch.bmm(softmax(s, -1), v).unflatten(0, (B, H))


def einsum_no_scale(q, k, v, softmax=F.softmax):
    s = torch.einsum("bhqd,bhkd->bhqk", q, k)
    return torch.einsum("bhqk,bhkd->bhqd", softmax(s, dim=-1), v)


def einsum_sequence_major(q, k, v, softmax=F.softmax):
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * 0.25
    return torch.einsum("bhqk,bkhd->bqhd", softmax(s, dim=-1), v)


def gqa_repeat_kv(q, k, v, mask, softmax=F.softmax):
    k, v = repeat_kv(k, H // k.shape[1]), repeat_kv(v, H // v.shape[1])
    s = torch.matmul(q, k.transpose(-2, -1)) * 0.25 + mask
    return torch.matmul(softmax(s, dim=-1), v)


def gqa_repeat_interleave(q, k, v, softmax=F.softmax):
    k, v = k.repeat_interleave(H // k.shape[1], dim=1), v.repeat_interleave(H // v.shape[1], dim=1)
    return softmax(q @ k.transpose(-2, -1) * 0.25, dim=-1) @ v


def mqa_expand(q, k, v, softmax=F.softmax):
    k, v = k.expand(B, H, N, D), v.expand(B, H, N, D)
    return softmax(q @ k.transpose(-2, -1) * 0.25, dim=-1) @ v


def masked_fill_finite(q, k, v, pad, softmax=F.softmax):
    """Annotated-Transformer style -1e9 fill; ``pad`` masks every key of some rows."""
    s = q @ k.transpose(-2, -1) / 4.0
    s = s.masked_fill(pad, -1e9)
    return softmax(s, dim=-1) @ v


def where_full_min(q, k, v, keep, softmax=F.softmax):
    """Older GPT-2: torch.where(causal, s, torch.full([], finfo.min)) and a torch.full scale."""
    s = torch.matmul(q, k.transpose(-1, -2))
    s = s / torch.full([], v.size(-1) ** 0.5, dtype=s.dtype, device=s.device)
    s = torch.where(keep, s, torch.full([], torch.finfo(s.dtype).min, dtype=s.dtype))
    return torch.matmul(softmax(s, dim=-1).type(v.dtype), v)


def entmax_marked(q, k, v, softmax=None):
    """User code calling adasplash_compile.entmax between the products (alpha = 2: sparsemax)."""
    s = q @ k.transpose(-2, -1) * 0.25
    return ac.entmax(s, alpha=2.0) @ v


@dataclass
class Case:
    fn: Callable
    pattern: str
    inputs: Callable
    mask: str = "none"
    dtype: torch.dtype = torch.float32


def _causal_keep():
    return torch.ones(N, N, dtype=torch.bool).tril()


def _padding_rows():
    pad = torch.zeros(B, 1, N, N, dtype=torch.bool)
    pad[1, :, 5:] = True  # queries 5.. of batch 1 see no key
    return pad


CASES = {
    "matmul_scale_float_mask": Case(
        matmul_scale_float_mask, "matmul-softmax", lambda: qkv() + [torch.randn(B, 1, N, N)], "float"),
    "at_mT_div_masked_fill": Case(
        at_mT_div_masked_fill, "matmul-softmax", lambda: qkv() + [_causal_keep()], "bool"),
    "bmm_where": Case(bmm_where, "matmul-softmax", lambda: qkv() + [_causal_keep()], "bool"),
    "einsum_no_scale": Case(einsum_no_scale, "einsum-softmax", lambda: qkv()),
    "einsum_sequence_major": Case(einsum_sequence_major, "einsum-softmax", lambda: qkv(layout="bnhd")),
    "gqa_repeat_kv": Case(gqa_repeat_kv, "matmul-softmax",
                          lambda: qkv(heads_kv=HKV) + [torch.randn(B, 1, 1, N)], "float"),
    "gqa_repeat_interleave": Case(gqa_repeat_interleave, "matmul-softmax", lambda: qkv(heads_kv=HKV)),
    "mqa_expand": Case(mqa_expand, "matmul-softmax", lambda: qkv(heads_kv=1)),
    "masked_fill_finite": Case(masked_fill_finite, "matmul-softmax", lambda: qkv() + [_padding_rows()],
                               "bool+fill(-1e+09)"),
    "where_full_min": Case(where_full_min, "matmul-softmax", lambda: qkv() + [_causal_keep()],
                           "bool+fill(-3.40282e+38)"),
    "bf16_softmax_in_float32": Case(
        matmul_scale_float_mask, "matmul-softmax",
        lambda: qkv(dtype=torch.bfloat16) + [torch.randn(B, 1, N, N, dtype=torch.bfloat16)], "float",
        torch.bfloat16),
    "entmax_marked": Case(entmax_marked, "matmul-entmax", lambda: qkv()),
}


def _run(fn, inputs, **kwargs):
    """Output and input gradients of sum(out * g) for a fixed random g."""
    inputs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out = fn(*inputs, **kwargs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(out.dtype)
    (out * g).sum().backward()
    return out.detach(), [t.grad for t in inputs if t.is_floating_point()]


@pytest.mark.parametrize("name", CASES)
def test_pattern_is_rewritten_and_equals_eager_entmax(name):
    case = CASES[name]
    inputs = case.inputs()
    report = ac.explain(case.fn, *inputs)
    assert [(s.pattern, s.rewritten, s.mask) for s in report.sites] == [(case.pattern, True, case.mask)]
    assert "torch.ops.adasplash.entmax_attention" in report.graphs[0].after
    torch._dynamo.reset()

    out, grads = _run(torch.compile(case.fn, backend=aot()), inputs)
    # Half-precision inputs: the op computes the scores in float32, so the reference does too.
    ref, ref_grads = _run(case.fn, [t.float() if t.is_floating_point() else t for t in inputs],
                          **({} if case.fn is entmax_marked else {"softmax": entmax15}))
    assert_close(out, ref.to(case.dtype), case.dtype)
    for g, rg in zip(grads, ref_grads):
        assert_close(g, rg.to(case.dtype), case.dtype)
    if case.fn is not entmax_marked:
        assert_differs(out.float(), case.fn(*inputs).float())


def test_fully_masked_rows_give_the_mean_of_v():
    """-1e9 fill: a row with every key masked is constant, so entmax (like softmax) is uniform."""
    q, k, v = qkv()
    out = torch.compile(masked_fill_finite, backend=aot())(q, k, v, _padding_rows())
    torch.testing.assert_close(out[1, :, 5:], v[1].mean(1, keepdim=True).expand(H, N - 5, D))


SDPA_CASES = {
    "plain": dict(),
    "causal": dict(is_causal=True),
    "bool_padding_mask": dict(attn_mask=torch.tensor([True] * 6 + [False] * 2).view(1, 1, 1, N)),
    "float_mask": dict(attn_mask=torch.randn(N, N)),
    "scale": dict(scale=0.2),
    "gqa": dict(enable_gqa=True),
    "causal_decode": dict(is_causal=True),
    "three_d": dict(),
}


@pytest.mark.parametrize("name", SDPA_CASES)
def test_sdpa_is_rewritten_and_equals_entmax_attention(name):
    kwargs = SDPA_CASES[name]
    q, k, v = qkv(heads_kv=HKV if name == "gqa" else H, n_kv=13 if name == "causal_decode" else N)
    if name == "causal_decode":
        q = q[:, :, :3]
    if name == "three_d":
        q, k, v = q[0], k[0], v[0]

    def f(q, k, v, sdpa=F.scaled_dot_product_attention, **extra):
        return sdpa(q, k, v, **kwargs, **extra)

    report = ac.explain(f, q, k, v)
    assert [(s.pattern, s.rewritten) for s in report.sites] == [("sdpa", True)]
    torch._dynamo.reset()
    out, grads = _run(torch.compile(f, backend=aot()), [q, k, v])
    entmax_sdpa = ac.entmax_attention if q.dim() == 4 else (
        lambda q, k, v, **kw: ac.entmax_attention(q[None], k[None], v[None], **kw)[0])
    ref, ref_grads = _run(f, [q, k, v], sdpa=entmax_sdpa)
    assert_close(out, ref)
    for g, rg in zip(grads, ref_grads):
        assert_close(g, rg)
    assert_differs(out, f(q, k, v))


def test_gqa_folds_repeat_kv_into_the_op():
    """k and v reach the op with their HKV heads, not the repeated H."""
    q, k, v = qkv(heads_kv=HKV)
    report = ac.explain(gqa_repeat_kv, q, k, v, torch.zeros(B, 1, 1, N))
    after = report.graphs[0].after
    assert "expand" not in after and "reshape" not in after
    assert "entmax_attention.default(l_q_, l_k_, l_v_," in after


@pytest.mark.parametrize("grad", ["inputs require grad", "no grad mode", "no input requires grad"])
def test_the_op_keeps_u_shift_only_where_a_backward_follows(grad):
    """for_backward (the backward's u_shift) is set where autograd will record the call, and only
    there: it costs the forward a product per tile."""
    q, k, v = (t.requires_grad_(grad != "no input requires grad") for t in qkv())
    with torch.set_grad_enabled(grad != "no grad mode"):
        report = ac.explain(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), q, k, v)
    expected = grad == "inputs require grad"
    assert f"1.5, None, None, {expected});" in report.graphs[0].after


@pytest.mark.parametrize("spelling", ["sdpa", "matmul"])
def test_dropout_in_training_uses_a_fresh_seed_each_call(spelling):
    """Training dropout: the op gets dropout_p and a seed drawn per call (torch.randint in the
    graph); with the same RNG state it equals the eager entmax_attention with dropout."""
    q, k, v = qkv()

    def f(q, k, v):
        if spelling == "sdpa":
            return F.scaled_dot_product_attention(q, k, v, dropout_p=0.25, is_causal=True)
        s = (q @ k.transpose(-2, -1) * 0.25).masked_fill(~_causal_keep(), float("-inf"))
        return F.dropout(F.softmax(s, -1), 0.25, training=True) @ v

    report = ac.explain(f, q, k, v)
    assert report.sites[0].dropout == 0.25
    assert "torch.randint(0, 2147483647, (1,)" in report.graphs[0].after
    torch._dynamo.reset()
    compiled = torch.compile(f, backend=aot())
    torch.manual_seed(1)
    out, grads = _run(compiled, [q, k, v])
    torch.manual_seed(1)
    ref, ref_grads = _run(ac.entmax_attention, [q, k, v], dropout_p=0.25, is_causal=True, scale=0.25)
    assert_close(out, ref)
    for g, rg in zip(grads, ref_grads):
        assert_close(g, rg)
    assert not torch.equal(compiled(q, k, v), compiled(q, k, v))


def test_entmax_with_per_head_alpha_tensor_learns_alpha():
    """adasplash_compile.entmax(s, alpha) with alpha of shape (H, 1): one alpha per head."""
    alpha = torch.tensor([1.2, 1.5, 2.0, 3.0]).view(H, 1)

    def f(q, k, v, alpha):
        return ac.entmax(q @ k.transpose(-2, -1) * 0.25, alpha=alpha) @ v

    q, k, v = qkv()
    report = ac.explain(f, q, k, v, alpha)
    assert [(s.pattern, s.rewritten, s.alpha) for s in report.sites] == [("matmul-entmax", True, "tensor(4, 1)")]
    torch._dynamo.reset()
    out, grads = _run(torch.compile(f, backend=aot()), [q, k, v, alpha])
    ref, ref_grads = _run(f, [q, k, v, alpha])
    assert_close(out, ref)
    for g, rg in zip(grads, ref_grads):
        assert_close(g, rg)
    assert grads[-1].abs().sum() > 0


class TestRewrittenGraphs(expecttest.TestCase):
    """The graph after the rewrite, per pattern (accept changes with EXPECTTEST_ACCEPT=1)."""

    def after(self, fn, *inputs) -> str:
        torch._dynamo.reset()
        report = ac.explain(fn, *inputs)
        return graph_text(report.graphs[0].after)

    def case(self, name) -> str:
        case = CASES[name]
        return self.after(case.fn, *case.inputs())

    def test_matmul_scale_float_mask(self):
        self.assertExpectedInline(self.case("matmul_scale_float_mask"), """\
class GraphModule(torch.nn.Module):
    def forward(self, L_k_: "f32[2, 4, 8, 16]", L_q_: "f32[2, 4, 8, 16]", L_mask_: "f32[2, 1, 8, 8]", L_v_: "f32[2, 4, 8, 16]"):
        l_k_ = L_k_
        l_q_ = L_q_
        l_mask_ = L_mask_
        l_v_ = L_v_

        entmax_attention_default = torch.ops.adasplash.entmax_attention.default(l_q_, l_k_, l_v_, l_mask_, 0.0, False, 0.3, 1.5, None, None, False);  l_q_ = l_k_ = l_v_ = l_mask_ = None
        getitem: "f32[2, 4, 8, 16]" = entmax_attention_default[0];  entmax_attention_default = None
        return (getitem,)""")

    def test_at_mT_div_masked_fill(self):
        self.assertExpectedInline(self.case("at_mT_div_masked_fill"), """\
class GraphModule(torch.nn.Module):
    def forward(self, L_k_: "f32[2, 4, 8, 16]", L_q_: "f32[2, 4, 8, 16]", L_keep_: "b8[8, 8]", L_v_: "f32[2, 4, 8, 16]"):
        l_k_ = L_k_
        l_q_ = L_q_
        l_keep_ = L_keep_
        l_v_ = L_v_

        entmax_attention_default = torch.ops.adasplash.entmax_attention.default(l_q_, l_k_, l_v_, l_keep_, 0.0, False, 0.25, 1.5, None, None, False);  l_q_ = l_k_ = l_v_ = l_keep_ = None
        getitem: "f32[2, 4, 8, 16]" = entmax_attention_default[0];  entmax_attention_default = None
        return (getitem,)""")

    def test_bmm_where(self):
        self.assertExpectedInline(self.case("bmm_where"), """\
class GraphModule(torch.nn.Module):
    def forward(self, L_q_: "f32[2, 4, 8, 16]", L_k_: "f32[2, 4, 8, 16]", L_v_: "f32[2, 4, 8, 16]", L_keep_: "b8[8, 8]"):
        l_q_ = L_q_
        l_k_ = L_k_
        l_v_ = L_v_
        l_keep_ = L_keep_

        q: "f32[8, 8, 16]" = l_q_.flatten(0, 1);  l_q_ = None
        k: "f32[8, 8, 16]" = l_k_.flatten(0, 1);  l_k_ = None
        v: "f32[8, 8, 16]" = l_v_.flatten(0, 1);  l_v_ = None

        unsqueeze: "f32[1, 8, 8, 16]" = torch.unsqueeze(q, 0);  q = None
        unsqueeze_1: "f32[1, 8, 8, 16]" = torch.unsqueeze(k, 0);  k = None
        unsqueeze_2: "f32[1, 8, 8, 16]" = torch.unsqueeze(v, 0);  v = None
        entmax_attention_default = torch.ops.adasplash.entmax_attention.default(unsqueeze, unsqueeze_1, unsqueeze_2, l_keep_, 0.0, False, 0.25, 1.5, None, None, False);  unsqueeze = unsqueeze_1 = unsqueeze_2 = l_keep_ = None
        getitem: "f32[1, 8, 8, 16]" = entmax_attention_default[0];  entmax_attention_default = None
        squeeze: "f32[8, 8, 16]" = torch.squeeze(getitem, 0);  getitem = None
        unflatten: "f32[2, 4, 8, 16]" = squeeze.unflatten(0, (2, 4));  squeeze = None
        return (unflatten,)""")

    def test_einsum_no_scale(self):
        self.assertExpectedInline(self.case("einsum_no_scale"), """\
class GraphModule(torch.nn.Module):
    def forward(self, L_q_: "f32[2, 4, 8, 16]", L_k_: "f32[2, 4, 8, 16]", L_v_: "f32[2, 4, 8, 16]"):
        l_q_ = L_q_
        l_k_ = L_k_
        l_v_ = L_v_

        entmax_attention_default = torch.ops.adasplash.entmax_attention.default(l_q_, l_k_, l_v_, None, 0.0, False, 1.0, 1.5, None, None, False);  l_q_ = l_k_ = l_v_ = None
        getitem: "f32[2, 4, 8, 16]" = entmax_attention_default[0];  entmax_attention_default = None
        return (getitem,)""")

    def test_einsum_sequence_major(self):
        self.assertExpectedInline(self.case("einsum_sequence_major"), """\
class GraphModule(torch.nn.Module):
    def forward(self, L_q_: "f32[2, 8, 4, 16]", L_k_: "f32[2, 8, 4, 16]", L_v_: "f32[2, 8, 4, 16]"):
        l_q_ = L_q_
        l_k_ = L_k_
        l_v_ = L_v_

        permute: "f32[2, 4, 8, 16]" = torch.permute(l_q_, (0, 2, 1, 3));  l_q_ = None
        permute_1: "f32[2, 4, 8, 16]" = torch.permute(l_k_, (0, 2, 1, 3));  l_k_ = None
        permute_2: "f32[2, 4, 8, 16]" = torch.permute(l_v_, (0, 2, 1, 3));  l_v_ = None
        entmax_attention_default = torch.ops.adasplash.entmax_attention.default(permute, permute_1, permute_2, None, 0.0, False, 0.25, 1.5, None, None, False);  permute = permute_1 = permute_2 = None
        getitem: "f32[2, 4, 8, 16]" = entmax_attention_default[0];  entmax_attention_default = None
        permute_3: "f32[2, 8, 4, 16]" = torch.permute(getitem, (0, 2, 1, 3));  getitem = None
        return (permute_3,)""")

    def test_gqa_repeat_kv(self):
        self.assertExpectedInline(self.case("gqa_repeat_kv"), """\
class GraphModule(torch.nn.Module):
    def forward(self, L_k_: "f32[2, 2, 8, 16]", L_v_: "f32[2, 2, 8, 16]", L_q_: "f32[2, 4, 8, 16]", L_mask_: "f32[2, 1, 1, 8]"):
        l_k_ = L_k_
        l_v_ = L_v_
        l_q_ = L_q_
        l_mask_ = L_mask_

        entmax_attention_default = torch.ops.adasplash.entmax_attention.default(l_q_, l_k_, l_v_, l_mask_, 0.0, False, 0.25, 1.5, None, None, False);  l_q_ = l_k_ = l_v_ = l_mask_ = None
        getitem_2: "f32[2, 4, 8, 16]" = entmax_attention_default[0];  entmax_attention_default = None
        return (getitem_2,)""")

    def test_gqa_repeat_interleave(self):
        self.assertExpectedInline(self.case("gqa_repeat_interleave"), """\
class GraphModule(torch.nn.Module):
    def forward(self, L_k_: "f32[2, 2, 8, 16]", L_v_: "f32[2, 2, 8, 16]", L_q_: "f32[2, 4, 8, 16]"):
        l_k_ = L_k_
        l_v_ = L_v_
        l_q_ = L_q_

        entmax_attention_default = torch.ops.adasplash.entmax_attention.default(l_q_, l_k_, l_v_, None, 0.0, False, 0.25, 1.5, None, None, False);  l_q_ = l_k_ = l_v_ = None
        getitem: "f32[2, 4, 8, 16]" = entmax_attention_default[0];  entmax_attention_default = None
        return (getitem,)""")

    def test_mqa_expand(self):
        self.assertExpectedInline(self.case("mqa_expand"), """\
class GraphModule(torch.nn.Module):
    def forward(self, L_k_: "f32[2, 1, 8, 16]", L_v_: "f32[2, 1, 8, 16]", L_q_: "f32[2, 4, 8, 16]"):
        l_k_ = L_k_
        l_v_ = L_v_
        l_q_ = L_q_

        entmax_attention_default = torch.ops.adasplash.entmax_attention.default(l_q_, l_k_, l_v_, None, 0.0, False, 0.25, 1.5, None, None, False);  l_q_ = l_k_ = l_v_ = None
        getitem: "f32[2, 4, 8, 16]" = entmax_attention_default[0];  entmax_attention_default = None
        return (getitem,)""")

    def test_masked_fill_finite(self):
        self.assertExpectedInline(self.case("masked_fill_finite"), """\
class GraphModule(torch.nn.Module):
    def forward(self, L_k_: "f32[2, 4, 8, 16]", L_q_: "f32[2, 4, 8, 16]", L_pad_: "b8[2, 1, 8, 8]", L_v_: "f32[2, 4, 8, 16]"):
        l_k_ = L_k_
        l_q_ = L_q_
        l_pad_ = L_pad_
        l_v_ = L_v_

        logical_not: "b8[2, 1, 8, 8]" = torch.logical_not(l_pad_)
        entmax_attention_default = torch.ops.adasplash.entmax_attention.default(l_q_, l_k_, l_v_, logical_not, 0.0, False, 0.25, 1.5, None, None, False);  l_q_ = l_k_ = logical_not = None
        getitem: "f32[2, 4, 8, 16]" = entmax_attention_default[0];  entmax_attention_default = None
        all_1: "b8[2, 1, 8, 1]" = torch.all(l_pad_, -1, keepdim = True);  l_pad_ = None
        mean: "f32[2, 4, 1, 16]" = torch.mean(l_v_, -2, keepdim = True);  l_v_ = None
        where: "f32[2, 4, 8, 16]" = torch.where(all_1, mean, getitem);  all_1 = mean = getitem = None
        return (where,)""")

    def test_where_full_min(self):
        self.assertExpectedInline(self.case("where_full_min"), """\
class GraphModule(torch.nn.Module):
    def forward(self, L_k_: "f32[2, 4, 8, 16]", L_q_: "f32[2, 4, 8, 16]", L_v_: "f32[2, 4, 8, 16]", L_keep_: "b8[8, 8]"):
        l_k_ = L_k_
        l_q_ = L_q_
        l_v_ = L_v_
        l_keep_ = L_keep_

        entmax_attention_default = torch.ops.adasplash.entmax_attention.default(l_q_, l_k_, l_v_, l_keep_, 0.0, False, 0.25, 1.5, None, None, False);  l_q_ = l_k_ = None
        getitem: "f32[2, 4, 8, 16]" = entmax_attention_default[0];  entmax_attention_default = None
        logical_not: "b8[8, 8]" = torch.logical_not(l_keep_);  l_keep_ = None
        all_1: "b8[8, 1]" = torch.all(logical_not, -1, keepdim = True);  logical_not = None
        mean: "f32[2, 4, 1, 16]" = torch.mean(l_v_, -2, keepdim = True);  l_v_ = None
        where_1: "f32[2, 4, 8, 16]" = torch.where(all_1, mean, getitem);  all_1 = mean = getitem = None
        return (where_1,)""")

    def test_entmax_marked(self):
        self.assertExpectedInline(self.case("entmax_marked"), """\
class GraphModule(torch.nn.Module):
    def forward(self, L_k_: "f32[2, 4, 8, 16]", L_q_: "f32[2, 4, 8, 16]", L_v_: "f32[2, 4, 8, 16]"):
        l_k_ = L_k_
        l_q_ = L_q_
        l_v_ = L_v_

        entmax_attention_default = torch.ops.adasplash.entmax_attention.default(l_q_, l_k_, l_v_, None, 0.0, False, 0.25, 2.0, None, None, False);  l_q_ = l_k_ = l_v_ = None
        getitem: "f32[2, 4, 8, 16]" = entmax_attention_default[0];  entmax_attention_default = None
        return (getitem,)""")

    def test_sdpa_gqa_causal(self):
        def f(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.2, enable_gqa=True)
        self.assertExpectedInline(self.after(f, *qkv(heads_kv=HKV)), """\
class GraphModule(torch.nn.Module):
    def forward(self, L_q_: "f32[2, 4, 8, 16]", L_k_: "f32[2, 2, 8, 16]", L_v_: "f32[2, 2, 8, 16]"):
        l_q_ = L_q_
        l_k_ = L_k_
        l_v_ = L_v_

        entmax_attention_default = torch.ops.adasplash.entmax_attention.default(l_q_, l_k_, l_v_, None, 0.0, True, 0.2, 1.5, None, None, False);  l_q_ = l_k_ = l_v_ = None
        getitem: "f32[2, 4, 8, 16]" = entmax_attention_default[0];  entmax_attention_default = None
        return (getitem,)""")

    def test_sdpa_mask_dropout(self):
        def f(q, k, v, mask):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.1)
        self.assertExpectedInline(self.after(f, *qkv(), torch.ones(N, N, dtype=torch.bool)), """\
class GraphModule(torch.nn.Module):
    def forward(self, L_q_: "f32[2, 4, 8, 16]", L_k_: "f32[2, 4, 8, 16]", L_v_: "f32[2, 4, 8, 16]", L_mask_: "b8[8, 8]"):
        l_q_ = L_q_
        l_k_ = L_k_
        l_v_ = L_v_
        l_mask_ = L_mask_

        randint: "i64[1]" = torch.randint(0, 2147483647, (1,), dtype = torch.int64, device = device(type='cpu'))
        entmax_attention_default = torch.ops.adasplash.entmax_attention.default(l_q_, l_k_, l_v_, l_mask_, 0.1, False, None, 1.5, None, randint, False);  l_q_ = l_k_ = l_v_ = l_mask_ = randint = None
        getitem: "f32[2, 4, 8, 16]" = entmax_attention_default[0];  entmax_attention_default = None
        return (getitem,)""")
