"""Attention forward and forward+backward: ours against SDPA (flash) and the ``adasplash`` package.

Every implementation of a point runs on the same (q, k, v), whose block sparsity is measured
exactly (``inputs.block_sparsity`` with the thresholds tau returned by our op).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import adasplash_compile
from lowering import routing

from . import adasplash_package, inputs
from .timing import attempt, median_ms, peak_mib

ALPHA = 1.5
MODES = ("fwd", "fwd_bwd")


@dataclass(frozen=True)
class AttentionPoint:
    """One input set: q, k, v of shape (batch, heads, seq, head_dim)."""

    seq: int
    batch: int
    heads: int
    head_dim: int
    causal: bool
    target: float
    dtype: str = "bfloat16"

    def label(self) -> str:
        kind = "causal" if self.causal else "full"
        return f"{kind} D={self.head_dim} N={self.seq} B={self.batch} bs~{self.target}"


def sdpa(q, k, v, causal):
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def sdpa_default(q, k, v, causal):
    """SDPA as it dispatches by default (on an H100 with recent torch often cuDNN, faster than
    the flash backend that ``sdpa`` pins)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def ours(q, k, v, causal):
    return adasplash_compile.entmax_attention(q, k, v, is_causal=causal, alpha=ALPHA)


def package(q, k, v, causal):
    """The package's dispatcher: AdaSplash-2 when causal (alpha 1.5), its v1 kernels otherwise."""
    return adasplash_package.module().adasplash(q, k, v, alpha=ALPHA, is_causal=causal)


IMPLS: dict[str, Callable] = {"ours": ours, "sdpa": sdpa, "sdpa_default": sdpa_default,
                              "adasplash": package}


def _ours_path(q, k, v, causal) -> str:
    args = (q, k, v, None, 0.0, causal, None, ALPHA, None, None)
    return "triton" if routing.use_triton_attention(*args) else "reference"


def _measure(fn, q, k, v, causal, mode, dout, device) -> dict:
    if mode == "fwd":
        def call():
            with torch.no_grad():
                fn(q, k, v, causal)
        leaves = None
    else:
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]

        def call():
            fn(*leaves, causal).backward(dout)
    ms = median_ms(call, device, grad_to_none=leaves)
    return {"ms": ms, "peak_mib": peak_mib(call, device, grad_to_none=leaves)}


def _sparsity(q, k, v, point) -> tuple[dict, Optional[str]]:
    """Exact block sparsity from our op's tau (checked against the reference on a few rows)."""
    def from_op():
        with torch.no_grad():
            _, tau, row_max, *_ = torch.ops.adasplash.entmax_attention(
                q, k, v, None, 0.0, point.causal, None, ALPHA, None, None)
        tau = tau + (ALPHA - 1) * row_max  # the op's tau is relative to (alpha - 1) row_max
        rows = inputs.sample_tile_rows(point.seq, 3)
        err = inputs.tau_error(q[:1], k[:1], tau[:1], causal=point.causal, alpha=ALPHA, tile_rows=rows)
        return {**inputs.block_sparsity(q, k, causal=point.causal, alpha=ALPHA, tau=tau),
                "tau_source": "op", "tau_max_abs_err_vs_reference": err}

    res = attempt(from_op)
    if "error" not in res:
        return res, None
    exact = inputs.block_sparsity(q, k, causal=point.causal, alpha=ALPHA)
    return {**exact, "tau_source": "reference"}, res["error"]


def _check(q, k, v, causal, with_package: bool) -> dict:
    """Our forward output is finite, and how far it is from the package's (same function)."""
    with torch.no_grad():
        mine = ours(q, k, v, causal).float()
        check = {"ours_finite": bool(torch.isfinite(mine).all())}
        if with_package:
            theirs = package(q, k, v, causal).float()
            check["max_abs_diff_vs_adasplash"] = float((theirs - mine).abs().max())
    return check


def run_point(point: AttentionPoint, impls, modes, device: torch.device, seed: int,
              allow_reference: bool = False) -> dict:
    """Calibrate, generate, measure the sparsity, then time every (implementation, mode)."""
    start = time.perf_counter()
    dtype = getattr(torch, point.dtype)
    calib = inputs.calibrate(point.target, heads=point.heads, seq=point.seq, head_dim=point.head_dim,
                             causal=point.causal, dtype=dtype, device=device, seed=seed, alpha=ALPHA)
    q, k, v = inputs.attention_inputs(point.batch, point.heads, point.seq, point.head_dim,
                                      calib["a"], dtype=dtype, device=device, seed=seed)
    dout = torch.randn(q.shape, device=device, generator=torch.Generator(device).manual_seed(seed + 1),
                       dtype=dtype)
    sparsity, op_error = _sparsity(q, k, v, point)
    path = _ours_path(q, k, v, point.causal)
    result = {"point": asdict(point), "alpha": ALPHA, "seed": seed, "calibration": calib,
              "sparsity": sparsity, "ours_path": path, "impls": {}}
    for name in impls:
        why = adasplash_package.unavailable(device) if name == "adasplash" else None
        if name == "ours" and op_error:
            why = f"op failed: {op_error}"
        elif name == "ours" and path == "reference" and device.type == "cuda" and not allow_reference:
            why = "the op routes to the slow reference here (pass --allow-reference to time it)"
        if why:
            result["impls"][name] = {"skipped": why}
            continue
        result["impls"][name] = {
            mode: attempt(lambda: _measure(IMPLS[name], q, k, v, point.causal, mode, dout, device))
            for mode in modes
        }
    ran = [n for n in impls if "skipped" not in result["impls"][n]]
    if "ours" in ran:
        result["check"] = attempt(lambda: _check(q, k, v, point.causal, "adasplash" in ran))
        # what the kernels did: threshold passes per query block (CUDA only), live tile fraction
        result["kernel_stats"] = attempt(lambda: adasplash_compile.attention_stats(
            q, k, v, is_causal=point.causal, alpha=ALPHA))
    result["wall_s"] = round(time.perf_counter() - start, 2)
    return result
