"""The ``adasplash`` torch.library ops: ``opcheck`` on each, and the attention op's saved statistics
(tau, row_max, tile_max).

opcheck runs the op for real and under fake tensors (shapes, dtypes and strides must agree),
checks the schema and the autograd registration, and traces it with AOTAutograd (dynamic shapes).
"""

import math

import pytest
import torch
from torch.library import opcheck

from lowering import TILE

ops = torch.ops.adasplash
F64 = torch.float64


def _transposed(B, H, N, D, dtype=torch.float32):
    """A (B, H, N, D) view of a (B, N, H, D) tensor: non-contiguous, as in most models."""
    return torch.randn(B, N, H, D, dtype=dtype).transpose(1, 2)


def _opcheck(op, args):
    result = opcheck(op, args)
    assert set(result.values()) == {"SUCCESS"}, result


# ----------------------------------------------------------------------------------------------
# entmax and entmax_backward.
# ----------------------------------------------------------------------------------------------

ENTMAX_CASES = {
    "contiguous": lambda: (torch.randn(3, 5, 7), 1.5, None, -1),
    "transposed-dim0": lambda: (torch.randn(7, 5).t(), 2.0, None, 0),
    "root-finder-f64": lambda: (torch.randn(4, 6, dtype=F64), 1.3, None, -1),
    "bf16": lambda: (torch.randn(4, 33, dtype=torch.bfloat16), 1.5, None, -1),
    "tensor-alpha": lambda: (torch.randn(3, 5, 7), 1.5, 1.1 + torch.rand(3, 7), 1),
    "broadcast-alpha": lambda: (torch.randn(5, 3, 7).transpose(0, 1), 1.5, 1.1 + torch.rand(5), -1),
}


@pytest.mark.parametrize("case", list(ENTMAX_CASES))
def test_opcheck_entmax(case):
    x, alpha, alpha_tensor, dim = ENTMAX_CASES[case]()
    x.requires_grad_(x.is_floating_point())
    if alpha_tensor is not None:
        alpha_tensor.requires_grad_()
    _opcheck(ops.entmax.default, (x, alpha, alpha_tensor, dim))


@pytest.mark.parametrize("case", list(ENTMAX_CASES))
def test_opcheck_entmax_backward(case):
    x, alpha, alpha_tensor, dim = ENTMAX_CASES[case]()
    p = ops.entmax(x, alpha, alpha_tensor, dim)
    grad = torch.randn_like(x)
    for need_alpha_grad in [False] + ([True] if alpha_tensor is not None else []):
        _opcheck(ops.entmax_backward.default, (grad, p, alpha, alpha_tensor, dim, need_alpha_grad))


# ----------------------------------------------------------------------------------------------
# entmax_attention and entmax_attention_backward.
# ----------------------------------------------------------------------------------------------


def _attention_case(name):
    """(q, k, v, attn_mask, dropout_p, is_causal, scale, alpha, head_alpha, dropout_seed)."""
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 7, 8), torch.randn(2, 4, 7, 8)
    mask, dropout_p, causal, scale, alpha, head_alpha, seed = None, 0.0, False, None, 1.5, None, None
    if name == "transposed":
        q, k, v = _transposed(2, 4, 5, 8), _transposed(2, 4, 7, 8), _transposed(2, 4, 7, 8)
    elif name == "gqa-head-alpha":
        k, v = _transposed(2, 2, 7, 8), _transposed(2, 2, 7, 6)
        head_alpha = 1.1 + torch.rand(4)
    elif name == "mqa-causal-bool-mask":
        k, v = torch.randn(2, 1, 7, 8), torch.randn(2, 1, 7, 8)
        mask, causal, alpha = torch.rand(5, 7) > 0.3, True, 2.0
    elif name == "float-mask-transposed":
        mask, scale, alpha = torch.randn(2, 1, 7, 5).transpose(-1, -2), 0.5, 1.7
    elif name == "dropout":
        dropout_p, seed = 0.25, torch.tensor([7])
    elif name == "bf16-long":
        q, k, v = (torch.randn(1, 2, n, 8, dtype=torch.bfloat16) for n in (70, 130, 130))
        causal = True
    return [q, k, v, mask, dropout_p, causal, scale, alpha, head_alpha, seed]


ATTENTION_CASES = ["contiguous", "transposed", "gqa-head-alpha", "mqa-causal-bool-mask",
                   "float-mask-transposed", "dropout", "bf16-long"]


@pytest.mark.parametrize("for_backward", [False, True])
@pytest.mark.parametrize("case", ATTENTION_CASES)
def test_opcheck_entmax_attention(case, for_backward):
    args = _attention_case(case)
    for i in (0, 1, 2, 3, 8):
        if args[i] is not None and args[i].is_floating_point():
            args[i].requires_grad_()
    _opcheck(ops.entmax_attention.default, tuple(args) + (for_backward,))


@pytest.mark.parametrize("case", ATTENTION_CASES)
def test_opcheck_entmax_attention_backward(case):
    q, k, v, mask, dropout_p, causal, scale, alpha, head_alpha, seed = _attention_case(case)
    out, tau, row_max, tile_max, u_shift = ops.entmax_attention(
        q, k, v, mask, dropout_p, causal, scale, alpha, head_alpha, seed, True)
    grad_out = torch.randn_like(out)
    need_mask = mask is not None and mask.is_floating_point()
    for flags in {(False, False), (need_mask, head_alpha is not None)}:
        _opcheck(ops.entmax_attention_backward.default,
                 (grad_out, q, k, v, tau, row_max, tile_max, out, u_shift, mask, dropout_p, causal,
                  scale, alpha, head_alpha, seed, *flags))


# ----------------------------------------------------------------------------------------------
# tau, row_max and tile_max, the attention op's statistics for the kernels.
# ----------------------------------------------------------------------------------------------


def _tiles_max(s):
    """max of s over TILE x TILE tiles (padding with -inf)."""
    r, n = s.shape[-2:]
    s = torch.nn.functional.pad(s, (0, -n % TILE, 0, -r % TILE), value=-math.inf)
    s = s.unflatten(-2, (-1, TILE)).unflatten(-1, (-1, TILE))
    return s.amax((-3, -1))


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("alpha", [1.5, "per-head", 2.0])
def test_tau_and_tile_max(oracle, is_causal, alpha):
    """row_max = max_j s_j; tau = -p_max^(alpha-1), relative to (alpha-1) row_max (+inf on dead rows);
    tile_max = max (s - row_max) per tile."""
    B, H, Nq, Nk = 1, 2, 70, 150
    q, k, v = (torch.randn(B, H, n, 4, dtype=F64) * 2 for n in (Nq, Nk, Nk))
    mask = torch.randn(1, H, Nq, Nk, dtype=F64)
    mask[..., 5, :] = -math.inf
    mask[..., 64:, :80] = -math.inf  # whole tiles excluded
    a = torch.tensor([1.3, 2.2], dtype=F64) if alpha == "per-head" else alpha
    out, tau, row_max, tile_max, u_shift = ops.entmax_attention(
        q, k, v, mask, 0.0, is_causal, None, 1.5 if alpha == "per-head" else alpha,
        a if alpha == "per-head" else None, None, True)
    s = oracle.scores(q, k, mask, is_causal)
    am1 = (a.view(1, H, 1) if alpha == "per-head" else torch.tensor(a)) - 1
    p = oracle.entmax(s, am1 + 1)
    smax = s.amax(-1)
    expected_tau = torch.where(smax > -math.inf, -p.amax(-1) ** am1, math.inf)
    assert torch.isinf(expected_tau[..., 5]).all()
    torch.testing.assert_close(tau, expected_tau, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(row_max, smax, rtol=0, atol=0)
    shift = torch.where(torch.isinf(smax), 0.0, smax).unsqueeze(-1)
    torch.testing.assert_close(tile_max, _tiles_max(s - shift), rtol=0, atol=0)
    # out + u_shift: the u-weighted mean of the values, u = p^(2 - alpha), so that the backward's
    # delta = sum_j u_j dP_j / sum_j u_j is rowsum(dO (out + u_shift))
    u = torch.where(p > 0, p ** (1 - am1).unsqueeze(-1), 0.0)  # p^(2 - alpha)
    expected_u_shift = (u @ v) / u.sum(-1, keepdim=True).clamp_min(1e-300)
    torch.testing.assert_close(out + u_shift, expected_u_shift, rtol=1e-9, atol=1e-11)

    # The promise the kernels rely on: a tile whose entry is at most the smallest relative
    # threshold tau / (alpha - 1) of its rows holds no weight.
    thr_rows = torch.nn.functional.pad(tau / am1, (0, -Nq % TILE), value=math.inf)
    thr_min = thr_rows.unflatten(-1, (-1, TILE)).amin(-1).unsqueeze(-1)
    dead = tile_max <= thr_min
    assert dead.any() and not dead.all()
    live_p = _tiles_max(p.masked_fill(p == 0, -math.inf)) > -math.inf
    assert not (dead & live_p).any()
