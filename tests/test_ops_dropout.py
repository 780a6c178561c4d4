"""Dropout on the attention weights: p is zeroed with probability dropout_p, survivors scaled by
1 / (1 - dropout_p), the keep-mask fixed by ``dropout_seed`` and regenerated in the backward.

With v the identity (Dv = Nk), the op's output is the dropped weight matrix itself.
"""

import pytest
import torch

import adasplash_compile as ac

ops = torch.ops.adasplash
F64 = torch.float64


def _weights(q, k, dropout_p, seed, alpha=1.5):
    """The (dropped) attention weights, read through v = I."""
    nk = k.shape[2]
    eye = torch.eye(nk, dtype=q.dtype).expand(k.shape[0], k.shape[1], nk, nk)
    seed_t = None if seed is None else torch.tensor([seed])
    return ops.entmax_attention(q, k, eye, None, dropout_p, False, None, alpha, None, seed_t)[0]


@pytest.mark.parametrize("dropout_p", [0.1, 0.5])
def test_dropout_zeroes_and_rescales_weights(dropout_p):
    q, k = torch.randn(2, 2, 6, 4, dtype=F64) * 2, torch.randn(2, 2, 9, 4, dtype=F64) * 2
    p = _weights(q, k, 0.0, None)
    support = p > 0
    n_seeds = 300
    kept = torch.zeros_like(p)
    for seed in range(n_seeds):
        w = _weights(q, k, dropout_p, seed)
        survived = w != 0
        assert not (survived & ~support).any()
        torch.testing.assert_close(w[survived], p[survived] / (1 - dropout_p), rtol=1e-12, atol=0)
        kept += survived
    # Each weight survives with probability 1 - dropout_p: a binomial count per entry, and overall.
    n = support.sum().item() * n_seeds
    rate = kept[support].sum().item() / n
    assert abs(rate - (1 - dropout_p)) < 5 * (dropout_p * (1 - dropout_p) / n) ** 0.5
    per_entry = kept[support] / n_seeds
    assert (per_entry - (1 - dropout_p)).abs().max() < 6 * (dropout_p * (1 - dropout_p) / n_seeds) ** 0.5


def test_dropout_is_unbiased():
    q, k, v = (torch.randn(1, 2, n, 4, dtype=F64) for n in (5, 7, 7))
    exact = ac.entmax_attention(q, k, v)
    samples = torch.stack([
        ops.entmax_attention(q, k, v, None, 0.3, False, None, 1.5, None, torch.tensor([s]))[0]
        for s in range(400)
    ])
    se = samples.std(0) / 400 ** 0.5
    assert ((samples.mean(0) - exact).abs() <= 5 * se + 1e-12).all()


def test_seed_fixes_the_mask():
    q, k, v = (torch.randn(1, 2, n, 4) for n in (5, 7, 7))
    run = lambda s: ops.entmax_attention(q, k, v, None, 0.4, False, None, 1.5, None, torch.tensor([s]))[0]
    torch.testing.assert_close(run(3), run(3), rtol=0, atol=0)
    assert not torch.equal(run(3), run(4))


def test_eager_dropout_draws_from_the_torch_generator():
    q, k, v = (torch.randn(1, 2, n, 4) for n in (5, 7, 7))
    torch.manual_seed(0)
    first, second = (ac.entmax_attention(q, k, v, dropout_p=0.4) for _ in range(2))
    torch.manual_seed(0)
    again = ac.entmax_attention(q, k, v, dropout_p=0.4)
    assert not torch.equal(first, second)
    torch.testing.assert_close(again, first, rtol=0, atol=0)


@pytest.mark.parametrize("is_causal", [False, True])
def test_gradcheck_with_fixed_seed(is_causal):
    """The backward regenerates the forward's keep-mask: finite differences agree."""
    q = torch.randn(1, 2, 4, 3, dtype=F64, requires_grad=True)
    k = torch.randn(1, 1, 5, 3, dtype=F64, requires_grad=True)
    v = torch.randn(1, 1, 5, 2, dtype=F64, requires_grad=True)
    mask = torch.randn(4, 5, dtype=F64, requires_grad=True)
    alpha = torch.tensor([1.4, 2.1], dtype=F64, requires_grad=True)
    seed = torch.tensor([2024])

    def f(q, k, v, mask, alpha):
        return ops.entmax_attention(q, k, v, mask, 0.3, is_causal, None, 1.5, alpha, seed)[0]

    assert torch.autograd.gradcheck(f, (q, k, v, mask, alpha))
