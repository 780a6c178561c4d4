"""``adasplash_compile.entmax`` against the float64 bisection oracle and the ``entmax`` package."""

import entmax as entmax_pkg
import pytest
import torch

import adasplash_compile as ac

ALPHAS = [1.05, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0]


def _x(*shape, dtype=torch.float64, spread=3.0):
    return (torch.randn(*shape, dtype=torch.float64) * spread).to(dtype)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dim", [-1, 0, 1])
def test_matches_bisection_float64(oracle, alpha, dim):
    x = _x(4, 6, 9)
    p = ac.entmax(x, alpha=alpha, dim=dim)
    expected = oracle.entmax(x, alpha, dim)
    torch.testing.assert_close(p, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(p.sum(dim), torch.ones_like(p.sum(dim)))
    if alpha >= 1.5:
        assert (p == 0).any(), "inputs this spread out must give a sparse output"


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 2e-6), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("alpha", [1.3, 1.5, 2.0, 2.6])
def test_lower_precision_matches_float64(oracle, dtype, atol, alpha):
    x = _x(8, 33, dtype=dtype)
    p = ac.entmax(x, alpha=alpha)
    assert p.dtype == dtype
    torch.testing.assert_close(p.double(), oracle.entmax(x, alpha), rtol=0, atol=atol)


def _package(x, alpha, dim):
    """The entmax package's function for alpha (alpha a float or a keepdim tensor)."""
    if isinstance(alpha, float) and alpha == 1.5:
        return entmax_pkg.entmax15(x, dim=dim)
    if isinstance(alpha, float) and alpha == 2.0:
        return entmax_pkg.sparsemax(x, dim=dim)
    return entmax_pkg.entmax_bisect(x, alpha, dim=dim, n_iter=100)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dim", [-1, 1])
def test_values_and_gradients_match_entmax_package(alpha, dim):
    x = _x(5, 7, 6).requires_grad_()
    x_pkg = x.detach().clone().requires_grad_()
    g = torch.randn(5, 7, 6, dtype=torch.float64)
    p = ac.entmax(x, alpha=alpha, dim=dim)
    p_pkg = _package(x_pkg, alpha, dim)
    torch.testing.assert_close(p, p_pkg, rtol=1e-7, atol=1e-10)
    (p * g).sum().backward()
    (p_pkg * g).sum().backward()
    torch.testing.assert_close(x.grad, x_pkg.grad, rtol=1e-6, atol=1e-9)


# (dim, alpha shape, the same alpha reshaped to keep dim) for x of shape (3, 4, 5).
ALPHA_SHAPES = [
    (-1, (), (1, 1, 1)),
    (-1, (1,), (1, 1, 1)),
    (-1, (4,), (1, 4, 1)),
    (-1, (3, 1), (3, 1, 1)),
    (-1, (3, 4), (3, 4, 1)),
    (1, (5,), (1, 1, 5)),
    (1, (3, 1), (3, 1, 1)),
    (1, (3, 5), (3, 1, 5)),
    (0, (4, 5), (1, 4, 5)),
]


@pytest.mark.parametrize("dim, shape, keepdim", ALPHA_SHAPES)
def test_tensor_alpha_gradient_matches_entmax_bisect(oracle, dim, shape, keepdim):
    x = _x(3, 4, 5).requires_grad_()
    alpha = (1.1 + 1.8 * torch.rand(shape, dtype=torch.float64)).requires_grad_()
    x_pkg = x.detach().clone().requires_grad_()
    alpha_pkg = alpha.detach().clone().requires_grad_()
    g = torch.randn(3, 4, 5, dtype=torch.float64)

    p = ac.entmax(x, alpha=alpha, dim=dim)
    torch.testing.assert_close(p, oracle.entmax(x, alpha, dim), rtol=1e-9, atol=1e-12)
    p_pkg = entmax_pkg.entmax_bisect(x_pkg, alpha_pkg.reshape(keepdim), dim=dim, n_iter=100)
    (p * g).sum().backward()
    (p_pkg * g).sum().backward()
    torch.testing.assert_close(x.grad, x_pkg.grad, rtol=1e-6, atol=1e-9)
    assert alpha.grad.shape == alpha.shape
    torch.testing.assert_close(alpha.grad, alpha_pkg.grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("value", [1.5, 2.0])
def test_tensor_alpha_equals_float_alpha(value):
    """A tensor alpha takes the root finder; a float 1.5 or 2 takes the exact sort-based path."""
    x = _x(6, 40)
    p_float = ac.entmax(x, alpha=value)
    p_tensor = ac.entmax(x, alpha=torch.full((6,), value, dtype=torch.float64))
    torch.testing.assert_close(p_tensor, p_float, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("alpha", [1.3, 1.5, 2.0, 2.7])
def test_gradcheck_x(alpha):
    x = _x(3, 7, spread=1.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ac.entmax(t, alpha=alpha, dim=0), (x,))


def test_gradcheck_x_and_tensor_alpha():
    x = _x(4, 6, spread=1.5).requires_grad_()
    alpha = torch.tensor([1.2, 1.5, 2.0, 2.6], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, a: ac.entmax(t, alpha=a), (x, alpha))


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.8])
def test_neg_inf_entries_and_empty_rows(oracle, alpha):
    x = _x(4, 9)
    x[0, [1, 4, 5]] = -float("inf")
    x[2] = -float("inf")
    x.requires_grad_()
    p = ac.entmax(x, alpha=alpha)
    torch.testing.assert_close(p, oracle.entmax(x, alpha), rtol=1e-9, atol=1e-12)
    assert (p[0, [1, 4, 5]] == 0).all() and (p[2] == 0).all()
    torch.testing.assert_close(p[[0, 1, 3]].sum(-1), torch.ones(3, dtype=torch.float64))
    p.backward(torch.randn_like(p))
    assert torch.isfinite(x.grad).all()
    assert (x.grad[2] == 0).all() and (x.grad[0, [1, 4, 5]] == 0).all()


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.3, 2.6])
@pytest.mark.parametrize("near_ties", [False, True])
def test_rows_of_very_different_support_sizes(oracle, alpha, near_ties):
    """The reference solves tau only over each row's entries within 1 of the max (packed to the
    widest such row when that halves the width): rows with one candidate, with hundreds, with
    -inf entries and none at all, side by side."""
    x = _x(6, 400, spread=8.0)
    x[1] = torch.randn(400, dtype=torch.float64) * 0.01  # every entry a candidate
    x[2, 1:] = x[2, 0] - 50  # only the max
    x[3, ::3] = -float("inf")
    x[4] = -float("inf")
    if not near_ties:
        x[1] *= 1000  # then no row has more than half its entries near the max
    p = ac.entmax(x, alpha=alpha)
    torch.testing.assert_close(p, oracle.entmax(x, alpha), rtol=1e-9, atol=1e-12)
    assert (p[4] == 0).all() and p[2, 0] == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.3])
def test_half_precision_extreme_logits_stay_finite(oracle, dtype, alpha):
    """Huge, very negative and finfo.min logits: finite, normalised, close to float64."""
    big = torch.finfo(dtype).max / 2
    x = _x(6, 16, spread=1.0)
    x[0] = x[0] * 1e4
    x[1, :8] = -1e4
    x[2, ::2] = torch.finfo(dtype).min
    x[3] = x[3] + big
    x[4] = torch.finfo(dtype).min
    x[4, 3] = 0.5
    x = x.to(dtype).requires_grad_()
    p = ac.entmax(x, alpha=alpha)
    assert torch.isfinite(p).all()
    atol = 2e-3 if dtype == torch.float16 else 1e-2
    torch.testing.assert_close(p.double(), oracle.entmax(x, alpha), rtol=0, atol=atol)
    torch.testing.assert_close(p.double().sum(-1), torch.ones(6, dtype=torch.float64), rtol=0, atol=4 * atol)
    p.backward(torch.randn_like(p))
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_mixed_dtypes_gradients(dtype):
    """Low-precision x with a float32 alpha: gradients in each input's dtype, close to float64."""
    x = _x(4, 12, dtype=dtype).requires_grad_()
    alpha = torch.tensor([1.3, 1.5, 2.0, 2.5], requires_grad=True)
    x64 = x.detach().double().requires_grad_()
    alpha64 = alpha.detach().double().requires_grad_()
    g = torch.randn(4, 12, dtype=torch.float64)
    (ac.entmax(x, alpha=alpha).double() * g).sum().backward()
    (entmax_pkg.entmax_bisect(x64, alpha64.unsqueeze(-1), n_iter=100) * g).sum().backward()
    assert x.grad.dtype == dtype and alpha.grad.dtype == torch.float32
    tol = {torch.float16: 1e-2, torch.bfloat16: 5e-2, torch.float32: 5e-5}[dtype]
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(alpha.grad.double(), alpha64.grad, rtol=tol, atol=tol)
