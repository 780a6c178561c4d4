"""Shared fixtures: per-test seeding and oracles written independently of ``lowering.reference``.

Oracles (all float64, dense, small sizes only):

- ``bisect_entmax(x, alpha, dim)``: tau by plain bisection on
  f(tau) = sum_j [z_j - tau]_+ ** (1 / (alpha - 1)) - 1 with z = (alpha - 1)(x - max x), which
  is decreasing with f(-1) >= 0 > f(0); p = [z - tau]_+ ** (1 / (alpha - 1)). No gradient.
- ``dense_attention(q, k, v, ...)``: materialises the Nq x Nk scores with SDPA's conventions
  (repeat_interleave for GQA, ``torch.ones(Nq, Nk).tril()`` for is_causal) and applies a
  normaliser over the keys: ``bisect_entmax`` by default, or any differentiable one (the
  ``entmax`` package) when a test needs autograd gradients. ``dense_scores`` gives those scores
  (q, k with the same number of heads).
"""

from __future__ import annotations

import inspect
import math
import os
import zlib
from types import SimpleNamespace

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter. The variable is read when a kernel
# is defined, so it is set here, before any test module imports ``kernels``.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _version(module) -> tuple:
    return tuple(int(part) for part in module.__version__.split(".")[:2])


def pytest_sessionstart(session):
    """Triton 3.6's interpreter (torch 2.11 pins it) breaks on numpy >= 2.4 (triton-lang/triton#9171):
    say so once instead of failing every kernel test with a TypeError from the interpreter."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    try:
        import numpy
        import triton
    except ImportError:
        return
    if _version(triton) < (3, 7) and _version(numpy) >= (2, 4):
        raise pytest.UsageError(
            f"Triton {triton.__version__}'s interpreter, which runs the kernel tests without a GPU, "
            f"fails with numpy {numpy.__version__}: install 'numpy<2.4' (or Triton >= 3.7)")


@pytest.fixture(autouse=True)
def _seed(request):
    """A different, reproducible random stream for every test."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


def _alpha_column(alpha, x: torch.Tensor, dim: int) -> torch.Tensor:
    """alpha as a float64 tensor broadcastable to x with size 1 along dim."""
    a = torch.as_tensor(alpha, dtype=torch.float64, device=x.device)
    rest = x.dim() - 1
    a = a.reshape((1,) * (rest - a.dim()) + tuple(a.shape))
    return a.unsqueeze(dim % x.dim())


def bisect_entmax(x: torch.Tensor, alpha, dim: int = -1, iters: int = 200) -> torch.Tensor:
    """float64 alpha-entmax along dim by bisection; rows of only -inf give zeros."""
    x = x.detach().to(torch.float64)
    a = _alpha_column(alpha, x, dim)
    zmax = x.amax(dim, keepdim=True)
    empty = torch.isneginf(zmax)
    z = (a - 1) * (x - torch.where(empty, torch.zeros_like(zmax), zmax))  # max(z) = 0
    lo, hi = torch.full_like(zmax, -1.0), torch.zeros_like(zmax)
    for _ in range(iters):
        mid = (lo + hi) / 2
        mass = ((z - mid).clamp_min(0) ** (1 / (a - 1))).sum(dim, keepdim=True)
        lo, hi = torch.where(mass >= 1, mid, lo), torch.where(mass >= 1, hi, mid)
    p = (z - lo).clamp_min(0) ** (1 / (a - 1))
    return torch.where(empty, torch.zeros_like(p), p)


def dense_scores(q, k, attn_mask=None, is_causal=False, scale=None):
    """s = scale q k^T + float mask, with -inf where a bool mask or causality excludes."""
    s = (q @ k.transpose(-1, -2)) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            s = s.masked_fill(~attn_mask, -math.inf)
        else:
            s = s + attn_mask.to(s.dtype)
    if is_causal:
        keep = torch.ones(q.shape[-2], k.shape[-2], device=q.device).tril().bool()
        s = s.masked_fill(~keep, -math.inf)
    return s


def dense_attention(q, k, v, attn_mask=None, is_causal=False, scale=None, alpha=1.5,
                    normalize=None) -> torch.Tensor:
    """float64 entmax attention from dense scores; GQA by repeat_interleave of k and v.

    alpha: a float or a (Hq,) tensor. normalize(s, alpha_b) maps scores (B, Hq, Nq, Nk) to
    weights, alpha_b being alpha broadcastable to s; bisect_entmax when None.
    """
    q, k, v = (t.to(torch.float64) for t in (q, k, v))
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    if attn_mask is not None and attn_mask.is_floating_point():
        attn_mask = attn_mask.to(torch.float64)
    s = dense_scores(q, k, attn_mask, is_causal, scale)
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.to(torch.float64).reshape(1, -1, 1, 1)
    if normalize is None:
        a = alpha.reshape(1, -1, 1) if isinstance(alpha, torch.Tensor) else alpha
        p = bisect_entmax(s, a, dim=-1)
    else:
        p = normalize(s, alpha)
    return p @ v


@pytest.fixture
def sweep_outputs():
    """A launch wrapper for the launch helpers of ``kernels`` (``launch``) that runs each kernel
    and keeps the dense sweep's row table and reference (``kept``: "table", "ref")."""
    kept = {}

    def launch(kernel):
        class Grid:
            def __getitem__(self, grid):
                def call(*args, **kwargs):
                    kernel[grid](*args, **kwargs)
                    if kernel.fn.__name__ == "adasplash_attention_max":
                        bound = dict(zip(inspect.signature(kernel.fn).parameters, args))
                        kept.update(table=bound["RowTable"].clone(), ref=bound["RowRef"].clone())
                return call
        return Grid()
    return SimpleNamespace(launch=launch, kept=kept)


@pytest.fixture
def oracle():
    """The independent float64 oracles of this module."""
    return SimpleNamespace(entmax=bisect_entmax, attention=dense_attention, scores=dense_scores)
