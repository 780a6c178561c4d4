"""Standalone alpha-entmax over the rows of a 2-D tensor: forward and backward kernels.

Forward: z = (alpha - 1)(x - max x) (max 0, so huge |x| keep their precision); t starts at -1 (a
lower bound of tau: the max alone gives p = 1 there), or, for the alphas of ``HISTOGRAM_MODES``
on long rows held on chip, within one bin of tau from a histogram of z (``histogram.py``), and
``threshold_step`` iterates to tau (see ``threshold.py``; a pass's count, sums and gap are
reduced together, and the gap saves most rows their last pass); p = [z - tau]_+^(1/(alpha-1)).
A row of up to ``MAX_ON_CHIP`` elements is read once and written once; longer rows are streamed in
chunks, one read per pass.

Backward, with u = p^(2 - alpha) on the support, U = sum u and g the incoming gradient:
dx = u (g - sum(u g) / U), and per row

    dalpha = (sum g p - sum g u / U) / (alpha-1)^2 - (sum g p log p - (sum g u / U) H) / (alpha-1),

H = sum p log p (the derivative of p with respect to alpha, contracted with g).
"""

import torch
import triton
import triton.language as tl

from .histogram import BINS, histogram_counts, histogram_start
from .threshold import (entmax_power, reduce_stats, threshold_stats, threshold_step,
                        threshold_terms)

MAX_ON_CHIP = 16384
STREAM_BLOCK = 4096  # chunk of a streamed row
MAX_STEPS = 32
ROW_ELEMENTS = 1024
ROW_WARPS = None  # None: by block size, from _WARPS
# Warps per program by elements per program, for 4-byte inputs: the fastest of 2, 4, 8, 16 on an
# H100 (fp32 and bf16 rows of 1k to 16k). The backward uses it for every dtype.
_WARPS = {1024: 2, 2048: 4, 4096: 4, 8192: 2, 16384: 4}
# The forward with 2-byte inputs and a closed-form alpha (1.5, 2; a pass costs a few operations
# per element): one warp a row up to 4k (no exchange between warps in a reduction). Measured on
# an H100 (alpha 1.5, bf16, 2^25 elements, device ms): 1k rows 0.076 -> 0.068 and 4k rows
# 0.079 -> 0.056 with 1 warp (8k: 0.067 with 2 and 4, 0.086 with 1; 16k: 0.070 with 4, 0.088
# with 2); 1 warp in fp32: 1k the same, 4k 0.095 -> 0.098.
_WARPS_16BIT_FWD = {**_WARPS, 1024: 1, 2048: 1, 4096: 1}
# Rows held on chip in blocks of at least HISTOGRAM_MIN_BLOCK start from a histogram for these
# ALPHA_MODEs (as the attention does, see ``attention_fwd.HISTOGRAM_MODES``); other rows start at
# t = -1. Measured on an H200, alpha 1.3, 32M elements: 16k rows 2.98 -> 0.81 ms in fp32 and
# 0.54 -> 0.59 ms in bf16; 1k and 4k rows 6-36% slower with it (0.26-0.33 ms without).
HISTOGRAM_MODES = (0,)
HISTOGRAM_MIN_BLOCK = 16384


@triton.jit
def _row_params(Alpha, rows, row_ok, alpha, ROWS: tl.constexpr, PER_ROW_ALPHA: tl.constexpr):
    """(alpha, alpha - 1, 1 / (alpha - 1)) per row, as [ROWS] vectors."""
    if PER_ROW_ALPHA:
        a = tl.load(Alpha + rows, mask=row_ok, other=1.5).to(tl.float32)
    else:
        a = tl.full([ROWS], alpha, tl.float32)
    return a, a - 1.0, 1.0 / (a - 1.0)


@triton.jit
def _load_rows(ptrs, offs, n, row_ok, other):
    return tl.load(ptrs + offs, mask=row_ok[:, None] & (offs < n), other=other).to(tl.float32)


@triton.jit
def adasplash_entmax_fwd(
    X, P, Alpha, stride_x, stride_p, R, N, alpha,
    ALPHA_MODE: tl.constexpr, PER_ROW_ALPHA: tl.constexpr, ROWS: tl.constexpr,
    BLOCK: tl.constexpr, ON_CHIP: tl.constexpr, HISTOGRAM: tl.constexpr, MAX_STEPS: tl.constexpr,
):
    alpha = tl.cast(alpha, tl.float32)  # callers may pass float64 scalars (Inductor does)
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < R
    x_rows = X + rows.to(tl.int64)[:, None] * stride_x
    p_rows = P + rows.to(tl.int64)[:, None] * stride_p
    _, am1, k = _row_params(Alpha, rows, row_ok, alpha, ROWS, PER_ROW_ALPHA)
    offs = tl.arange(0, BLOCK)[None, :]
    ninf = float("-inf")

    if ON_CHIP:
        x = _load_rows(x_rows, offs, N, row_ok, ninf)
        xmax = tl.max(x, 1)
    else:
        # streamed: accumulate elementwise over the chunks and reduce once after each loop
        # (a reduction inside the chunk loop crashed Triton 3.6's thread-locality pass)
        xacc = tl.full([ROWS, BLOCK], ninf, tl.float32)
        for c in range(0, N, BLOCK):
            xacc = tl.maximum(xacc, _load_rows(x_rows + c, offs, N - c, row_ok, ninf))
        xmax = tl.max(xacc, 1)
    empty = xmax == ninf
    if HISTOGRAM:
        # a start within one bin of tau from the counts of x near its max (``histogram.py``)
        c = BINS * am1
        lo, hi, top = histogram_counts(x, xmax, c)
        t = histogram_start(lo, hi, top, xmax, c, k, ALPHA_MODE)
    else:
        t = tl.where(empty, float("inf"), -1.0)
    xmax = tl.where(empty, 0.0, xmax)
    if ON_CHIP:
        z = am1[:, None] * (x - xmax[:, None])

    lo = tl.where(empty, float("inf"), -1.0)
    hi = tl.where(empty, float("inf"), 0.0)
    prev = tl.full([ROWS], -1.0, tl.float32)
    done = empty
    step = 0
    while (step < MAX_STEPS) & (tl.min(done.to(tl.int32), 0) == 0):
        if ON_CHIP:
            count, s1, s2, gap = threshold_stats(z - t[:, None], ALPHA_MODE, k[:, None])
        else:
            a0 = tl.zeros([ROWS, BLOCK], tl.float32)
            a1 = tl.zeros([ROWS, BLOCK], tl.float32)
            a2 = tl.zeros([ROWS, BLOCK], tl.float32)
            a3 = tl.full([ROWS, BLOCK], float("inf"), tl.float32)
            for c in range(0, N, BLOCK):
                zc = am1[:, None] * (_load_rows(x_rows + c, offs, N - c, row_ok, ninf) - xmax[:, None])
                c0, c1, c2, c3 = threshold_terms(zc - t[:, None], ALPHA_MODE, k[:, None])
                a0 += c0
                a1 += c1
                a2 += c2
                a3 = tl.minimum(a3, c3)
            count, s1, s2, gap = reduce_stats(a0, a1, a2, a3)
        t_next, lo, hi, prev, converged = threshold_step(t, lo, hi, count, s1, s2, gap, prev, k,
                                                         ALPHA_MODE)
        t = tl.where(done, t, t_next)
        done = done | converged
        step += 1

    if ON_CHIP:
        p = entmax_power(tl.maximum(z - t[:, None], 0.0), k[:, None], ALPHA_MODE)
        tl.store(p_rows + offs, p.to(P.dtype.element_ty), mask=row_ok[:, None] & (offs < N))
    else:
        for c in range(0, N, BLOCK):
            zc = am1[:, None] * (_load_rows(x_rows + c, offs, N - c, row_ok, ninf) - xmax[:, None])
            p = entmax_power(tl.maximum(zc - t[:, None], 0.0), k[:, None], ALPHA_MODE)
            tl.store(p_rows + c + offs, p.to(P.dtype.element_ty),
                     mask=row_ok[:, None] & (offs < N - c))


@triton.jit
def _support_weight(p, a, ALPHA_MODE: tl.constexpr):
    """u = p^(2 - alpha) on the support (a broadcasts against p)."""
    if ALPHA_MODE == 1:
        return tl.sqrt(p)
    elif ALPHA_MODE == 2:
        return (p > 0).to(tl.float32)
    else:
        return tl.where(p > 0, tl.exp2((2.0 - a) * tl.log2(tl.maximum(p, 1e-30))), 0.0)


@triton.jit
def _grad_terms(p, g, a, ALPHA_MODE: tl.constexpr, NEED_DALPHA: tl.constexpr):
    """Elementwise u, u g and, for dalpha, g p, g p log p and p log p (to be summed per row)."""
    u = _support_weight(p, a, ALPHA_MODE)
    if NEED_DALPHA:
        plogp = tl.where(p > 0, p * tl.log(tl.maximum(p, 1e-30)), 0.0)
        return u, u * g, g * p, g * plogp, plogp
    else:
        return u, u * g, u, u, u


@triton.jit
def _grad_sums(p, g, a, ALPHA_MODE: tl.constexpr, NEED_DALPHA: tl.constexpr):
    """Row sums of ``_grad_terms``."""
    t0, t1, t2, t3, t4 = _grad_terms(p, g, a, ALPHA_MODE, NEED_DALPHA)
    return tl.sum(t0, 1), tl.sum(t1, 1), tl.sum(t2, 1), tl.sum(t3, 1), tl.sum(t4, 1)


@triton.jit
def adasplash_entmax_bwd(
    G, P, DX, Alpha, DAlpha, stride_g, stride_p, stride_dx, R, N, alpha,
    ALPHA_MODE: tl.constexpr, PER_ROW_ALPHA: tl.constexpr, NEED_DALPHA: tl.constexpr,
    ROWS: tl.constexpr, BLOCK: tl.constexpr, ON_CHIP: tl.constexpr,
):
    alpha = tl.cast(alpha, tl.float32)
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < R
    g_rows = G + rows.to(tl.int64)[:, None] * stride_g
    p_rows = P + rows.to(tl.int64)[:, None] * stride_p
    dx_rows = DX + rows.to(tl.int64)[:, None] * stride_dx
    a, am1, _ = _row_params(Alpha, rows, row_ok, alpha, ROWS, PER_ROW_ALPHA)
    offs = tl.arange(0, BLOCK)[None, :]

    if ON_CHIP:
        p = _load_rows(p_rows, offs, N, row_ok, 0.0)
        g = _load_rows(g_rows, offs, N, row_ok, 0.0)
        su, sug, sgp, sgplogp, ent = _grad_sums(p, g, a[:, None], ALPHA_MODE, NEED_DALPHA)
    else:
        acc0 = tl.zeros([ROWS, BLOCK], tl.float32)
        acc1 = tl.zeros([ROWS, BLOCK], tl.float32)
        acc2 = tl.zeros([ROWS, BLOCK], tl.float32)
        acc3 = tl.zeros([ROWS, BLOCK], tl.float32)
        acc4 = tl.zeros([ROWS, BLOCK], tl.float32)
        for c in range(0, N, BLOCK):
            pc = _load_rows(p_rows + c, offs, N - c, row_ok, 0.0)
            gc = _load_rows(g_rows + c, offs, N - c, row_ok, 0.0)
            c0, c1, c2, c3, c4 = _grad_terms(pc, gc, a[:, None], ALPHA_MODE, NEED_DALPHA)
            acc0 += c0
            acc1 += c1
            acc2 += c2
            acc3 += c3
            acc4 += c4
        su, sug = tl.sum(acc0, 1), tl.sum(acc1, 1)
        sgp, sgplogp, ent = tl.sum(acc2, 1), tl.sum(acc3, 1), tl.sum(acc4, 1)

    delta = sug / tl.where(su > 0, su, 1.0)
    if NEED_DALPHA:
        da = (sgp - delta) / (am1 * am1) - (sgplogp - delta * ent) / am1
        tl.store(DAlpha + rows, da, mask=row_ok)

    if ON_CHIP:
        dx = _support_weight(p, a[:, None], ALPHA_MODE) * (g - delta[:, None])
        tl.store(dx_rows + offs, dx.to(DX.dtype.element_ty), mask=row_ok[:, None] & (offs < N))
    else:
        for c in range(0, N, BLOCK):
            pc = _load_rows(p_rows + c, offs, N - c, row_ok, 0.0)
            gc = _load_rows(g_rows + c, offs, N - c, row_ok, 0.0)
            dx = _support_weight(pc, a[:, None], ALPHA_MODE) * (gc - delta[:, None])
            tl.store(dx_rows + c + offs, dx.to(DX.dtype.element_ty),
                     mask=row_ok[:, None] & (offs < N - c))


# ----------------------------------------------------------------------------------------------
# Launch helpers: 2-D row-major views in, outputs allocated here. ``launch`` wraps each kernel
# before it is indexed with its grid (identity when called directly; ``wrap_triton`` in an op).
# ----------------------------------------------------------------------------------------------


def alpha_mode(alpha: float, per_row: bool) -> int:
    """1 for alpha = 1.5, 2 for alpha = 2 (closed forms), 0 otherwise."""
    if per_row:
        return 0
    return {1.5: 1, 2.0: 2}.get(float(alpha), 0)


def _row_config(N: int, warps=_WARPS):
    """(rows per program, block, whole row on chip, warps): short rows share a program."""
    if N > MAX_ON_CHIP:  # streamed in chunks
        return 1, STREAM_BLOCK, False, ROW_WARPS or 8
    block = triton.next_power_of_2(max(N, 16))
    rows = max(1, ROW_ELEMENTS // block)
    return rows, block, True, ROW_WARPS or warps.get(block * rows, 4)


def _identity(kernel):
    return kernel


def entmax_forward(x: torch.Tensor, alpha: float, row_alpha=None, launch=_identity) -> torch.Tensor:
    """alpha-entmax over the last dim of a 2-D x (unit stride in the last dim).

    row_alpha: None, or a float32 (rows,) tensor of per-row alphas (then ``alpha`` is ignored).
    """
    R, N = x.shape
    p = torch.empty((R, N), dtype=x.dtype, device=x.device)
    if R == 0 or N == 0:
        return p
    per_row = row_alpha is not None
    mode = alpha_mode(alpha, per_row)
    one_warp = x.element_size() == 2 and mode != 0  # (measured for alpha 1.5 only)
    rows, block, on_chip, num_warps = _row_config(N, _WARPS_16BIT_FWD if one_warp else _WARPS)
    launch(adasplash_entmax_fwd)[(triton.cdiv(R, rows),)](
        x, p, row_alpha if per_row else x, x.stride(0), p.stride(0), R, N, float(alpha),
        ALPHA_MODE=mode, PER_ROW_ALPHA=per_row, ROWS=rows, BLOCK=block, ON_CHIP=on_chip,
        HISTOGRAM=on_chip and mode in HISTOGRAM_MODES and block >= HISTOGRAM_MIN_BLOCK,
        MAX_STEPS=MAX_STEPS, num_warps=num_warps,
    )
    return p


def entmax_backward(grad: torch.Tensor, p: torch.Tensor, alpha: float, row_alpha=None,
                    need_dalpha: bool = False, launch=_identity):
    """(dx, dalpha per row or None) for 2-D grad and p (unit stride in the last dim)."""
    R, N = p.shape
    dx = torch.empty((R, N), dtype=p.dtype, device=p.device)
    dalpha = torch.empty((R,), dtype=torch.float32, device=p.device) if need_dalpha else None
    if R == 0 or N == 0:
        return dx, (dalpha.zero_() if need_dalpha else None)
    rows, block, on_chip, num_warps = _row_config(N)
    per_row = row_alpha is not None
    launch(adasplash_entmax_bwd)[(triton.cdiv(R, rows),)](
        grad, p, dx, row_alpha if per_row else p, dalpha if need_dalpha else dx,
        grad.stride(0), p.stride(0), dx.stride(0), R, N, float(alpha),
        ALPHA_MODE=alpha_mode(alpha, per_row), PER_ROW_ALPHA=per_row, NEED_DALPHA=need_dalpha,
        ROWS=rows, BLOCK=block, ON_CHIP=on_chip, num_warps=num_warps,
    )
    return dx, dalpha
