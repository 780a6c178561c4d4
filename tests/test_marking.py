"""sparse_attention: marking classes and instances (alpha, exclusion, scope="marked"), a learnable
per-head alpha, and clear errors for bad markings."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import adasplash_compile as ac
from compile_helpers import aot, assert_close, assert_differs, fresh_compile  # noqa: F401

B, H, N, E = 2, 4, 8, 32


class SelfAttention(nn.Module):
    """Causal self-attention through SDPA; ``sdpa`` is swappable for the eager reference."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(E, 3 * E)

    def forward(self, x, sdpa=F.scaled_dot_product_attention):
        q, k, v = self.qkv(x).view(B, N, 3, H, E // H).permute(2, 0, 3, 1, 4)
        return sdpa(q, k, v, is_causal=True).transpose(1, 2).reshape(B, N, E)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = SelfAttention()

    def forward(self, x, sdpa=F.scaled_dot_product_attention):
        return self.inner(x, sdpa)


class Net(nn.Module):
    def __init__(self, first=SelfAttention, second=SelfAttention):
        super().__init__()
        self.first, self.second = first(), second()

    def forward(self, x, sdpas=(F.scaled_dot_product_attention,) * 2):
        return self.second(self.first(x, sdpas[0]), sdpas[1])


def entmax_sdpa(alpha):
    return lambda q, k, v, is_causal: ac.entmax_attention(q, k, v, is_causal=is_causal, alpha=alpha)


def x_input():
    return torch.randn(B, N, E) * 3


def sites(report):
    return [(s.module, s.rewritten, s.alpha, s.reason) for s in report.sites]


def test_class_decorator_sets_alpha_for_every_instance():
    @ac.sparse_attention(alpha=2.0)
    class Sparsemax(SelfAttention):
        pass

    net, x = Net(Sparsemax, SelfAttention), x_input()
    assert sites(ac.explain(net, x)) == [("first", True, "2", ""), ("second", True, "1.5", "")]
    torch._dynamo.reset()
    out = torch.compile(net, backend=aot())(x)
    assert_close(out, net(x, (entmax_sdpa(2.0), entmax_sdpa(1.5))))


def test_bare_decorator_marks_with_the_backend_alpha():
    @ac.sparse_attention
    class Marked(SelfAttention):
        pass

    net = Net(Marked, SelfAttention)
    report = ac.Backend(alpha=1.7, scope="marked").explain(net, x_input())
    assert sites(report) == [
        ("first", True, "1.7", ""),
        ("second", False, "", "not inside a module marked with sparse_attention (scope='marked')")]


def test_instance_marking_affects_only_that_instance():
    net, x = Net(), x_input()
    assert ac.sparse_attention(net.second, alpha=1.3) is net.second
    assert isinstance(net.second, SelfAttention) and type(net.first) is SelfAttention
    assert sites(ac.explain(net, x)) == [("first", True, "1.5", ""), ("second", True, "1.3", "")]
    torch._dynamo.reset()
    out = torch.compile(net, backend=aot())(x)
    assert_close(out, net(x, (entmax_sdpa(1.5), entmax_sdpa(1.3))))


def test_excluded_module_keeps_softmax():
    net, x = Net(), x_input()
    ac.sparse_attention(net.first, enabled=False)
    report = ac.explain(net, x)
    assert sites(report) == [("first", False, "", "excluded by sparse_attention(enabled=False) on first"),
                             ("second", True, "1.5", "")]
    torch._dynamo.reset()
    out = torch.compile(net, backend=aot())(x)
    assert_close(out, net(x, (F.scaled_dot_product_attention, entmax_sdpa(1.5))))


def test_innermost_marking_decides():
    @ac.sparse_attention(alpha=2.0)
    class OuterBlock(Block):
        pass

    net = Net(OuterBlock, OuterBlock)
    ac.sparse_attention(net.second.inner, alpha=1.25)
    assert sites(ac.explain(net, x_input())) == [("first.inner", True, "2", ""),
                                                 ("second.inner", True, "1.25", "")]


def test_remarking_an_instance_replaces_its_marking():
    net, x = Net(), x_input()
    ac.sparse_attention(net.first, alpha=nn.Parameter(torch.full((H,), 1.6)))
    ac.sparse_attention(net.first, alpha=1.9)
    assert not hasattr(net.first, "adasplash_alpha")
    assert not net.first._forward_pre_hooks
    assert type(net.first).__mro__[1] is SelfAttention  # one marked subclass, not a chain
    assert sites(ac.explain(net, x))[0] == ("first", True, "1.9", "")


def test_learnable_per_head_alpha():
    """alpha as an nn.Parameter of shape (H,): a parameter of the module, with the entmax gradient."""
    net, x = Net(), x_input()
    alpha = nn.Parameter(torch.tensor([1.2, 1.5, 2.0, 3.0]))
    ac.sparse_attention(net.first, alpha=alpha)
    assert any(p is alpha for p in net.parameters())
    assert sites(ac.explain(net, x))[0] == ("first", True, "tensor(4,)", "")
    torch._dynamo.reset()

    out = torch.compile(net, backend=aot())(x)
    out.sum().backward()
    grad, alpha.grad = alpha.grad.clone(), None
    grads = [p.grad.clone() for p in net.second.parameters()]
    net.zero_grad()
    ref = net(x, (entmax_sdpa(alpha), entmax_sdpa(1.5)))
    ref.sum().backward()
    assert_close(out, ref)
    assert_close(grad, alpha.grad)
    for g, p in zip(grads, net.second.parameters()):
        assert_close(g, p.grad)
    assert grad.abs().min() > 0
    assert_differs(out, net(x, (entmax_sdpa(1.5), entmax_sdpa(1.5))))


def test_tensor_alpha_of_the_wrong_shape_is_an_error_at_compile_time():
    net = Net()
    ac.sparse_attention(net.first, alpha=torch.full((H + 1,), 1.5))
    with pytest.raises(Exception, match=r"alpha of shape \(5,\) at first: .* 4 query heads"):
        torch.compile(net, backend=aot())(x_input())


@pytest.mark.parametrize("alpha, error, message", [
    (1.0, ValueError, "alpha must be > 1"),
    (float("nan"), ValueError, "alpha must be > 1"),
    ("2", TypeError, "alpha must be a float > 1 or a tensor, got str"),
    (torch.full((2, 2), 1.5), ValueError, r"shape \(num_heads,\), got shape \(2, 2\)"),
    (torch.tensor([1.5, 0.9]), ValueError, "alpha must be .*> 1 everywhere, got value 0.89"),
    (nn.Parameter(torch.ones(4)) * 2, ValueError, "alpha must be a leaf tensor"),
])
def test_bad_alpha_is_rejected(alpha, error, message):
    with pytest.raises(error, match=message):
        ac.sparse_attention(SelfAttention(), alpha=alpha)


def test_bad_targets_are_rejected():
    with pytest.raises(TypeError, match="marks an nn.Module subclass or instance, got function"):
        ac.sparse_attention(lambda x: x)
    with pytest.raises(TypeError, match="enabled must be a bool, got 'no'"):
        ac.sparse_attention(SelfAttention(), enabled="no")
    with pytest.raises(TypeError, match="a tensor alpha belongs to one module"):
        ac.sparse_attention(alpha=torch.full((H,), 1.5))(SelfAttention)
