"""Block-sparse alpha-entmax attention forward (AdaSplash-2 style), three kernels.

For a block of BLOCK_M query rows of one head, with s = scale q k^T + mask (-inf where excluded):

1. ``adasplash_attention_max`` (dense): one sweep over the admissible key tiles gives the row max m
   and, per TILE x TILE tile, an upper bound of max (s_ij - m_i) over the tile: the tile-max table,
   which the backward reads too. The sweep runs from the last key tile down, so that for causal
   (local) attention the row max is found first; the bound uses the running max, which only grows.
   For the alphas of ``HISTOGRAM_MODES`` it also counts the scores near the max in 8 bins and
   writes a start for tau, within one bin of it (``histogram.py``).
2. ``adasplash_attention_threshold`` (sparse): with z = (alpha - 1)(s - m) (max 0), threshold
   passes (``threshold.py``) start there, or else at t = -1 <= tau. A tile can hold some z > t
   only if its table entry reaches t / (alpha - 1) for one of its rows, so each pass first
   compacts the list of such tiles, then visits only them, until the support is proven
   unchanged (t = tau). The proof's gap is cut at the largest table entry of the tiles a pass
   skipped.
3. ``adasplash_attention_out`` (sparse): visits the tiles live for tau:
   out = sum_j p_j v_j / sum_j p_j, p = [z - tau]_+^(1/(alpha-1)) (the division is exact for the
   exact tau and absorbs rounding). For the backward it can also give u_shift = u_mean - out
   (out as stored, in its dtype), u_mean = sum_j u_j v_j / sum_j u_j, u = p^(2 - alpha), from
   which delta = rowsum(dO (out + u_shift)) (the entmax form of flash attention's rowsum(dO out);
   a part common to the values, which the backward cancels, lies in out, stored exactly). A
   visited tile whose weights are all zero for a 64-row slice gets -inf in the table, so that the
   backward visits only the tiles that hold some p > 0 (the table's bound alone is loose: it
   mixes the rows of a slice and uses the running max).

Tiles with every key in range and, if causal, before the block's first row (``_interior_tiles``)
skip the range and causal checks: the dense sweep visits them apart, and the sparse passes, whose
tile lists are ascending, visit the live ones first in a loop of their own.

tau is saved relative to (alpha - 1) m, with m: absolute values would round tau away for huge |s|.
No length is a compile-time constant: one compiled kernel serves every Nq, Nk.
"""

import torch
import triton
import triton.language as tl

from .entmax_rows import alpha_mode
from .histogram import BINS, histogram_start, histogram_update
from .threshold import p_and_u, threshold_terms, threshold_step
from .tiles import load_tile, score_tile, shifted_scores

TILE = 64
MAX_STEPS = 32
LIST_CHUNK = 128
# Query rows per program of the dense and the sparse kernel (head dims up to 128; 64 above).
DENSE_BLOCK_M = 128
DENSE_KEY_TILES = 2  # key tiles per step of the dense sweep
SPARSE_BLOCK_M = 64  # measured faster than 128 (tighter live-tile lists)
# ALPHA_MODEs whose threshold passes start from the sweep's histogram (``histogram.py``); the
# others start from t = -1. The histogram pays for itself only where passes are costly: measured
# on an H200 (N = 16k, H = 16, D = 128, bf16, causal), it makes the sweep 1.1 -> 2.1-3.1 ms and
# cuts the passes per query block 5.5 -> 3.0 (alpha 1.3), 5.9 -> 2.6 (alpha 2) and 3.9 -> 2.1
# (alpha 1.5), and the forward is 34% / 25% / 5% faster at block sparsity 0 (alpha 2: 0.17), 8%
# faster at 0.72 for alpha 1.3, but 17-30% slower for alpha 1.5 and 2 at block sparsity >= 0.74.
HISTOGRAM_MODES = (0,)


@triton.jit
def _program_coords(Hq, G, Nq, Nk, BLOCK_M: tl.constexpr, IS_CAUSAL: tl.constexpr):
    """(pid_m, bh, b, h, kv head, number of key tiles to visit); longest causal blocks first."""
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    if IS_CAUSAL:
        n_kt = tl.cdiv(tl.minimum(Nk, (pid_m + 1) * BLOCK_M), 64)
    else:
        n_kt = tl.cdiv(Nk, 64)
    return pid_m, bh, b, h, h // G, n_kt


@triton.jit
def _interior_tiles(pid_m, Nq, Nk, BLOCK_M: tl.constexpr, IS_CAUSAL: tl.constexpr):
    """How many key tiles from 0 need no range or causal check for this query block: every key
    in range and, if causal, before the block's first row; none for the last block (padded rows)."""
    n_free = Nk // 64
    if IS_CAUSAL:
        n_free = tl.minimum(n_free, pid_m * (BLOCK_M // 64))
    if (pid_m + 1) * BLOCK_M > Nq:
        n_free = 0
    return n_free


@triton.jit
def _max_block(q, K, Mask, k_base, mask_base, offs_m, kb, offs_d, stride_kn, stride_kd, stride_mm,
               stride_mn, Nq, Nk, D, scale, m, lo, hi, top, c, tm_ptrs, slices, n_tiles_m,
               n_tiles_n, IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr,
               PRECISION: tl.constexpr, BOUNDS: tl.constexpr, HISTOGRAM: tl.constexpr,
               R: tl.constexpr, T: tl.constexpr):
    """One block of T key tiles of the dense sweep: updates the row max m and, if HISTOGRAM, the
    counts (lo, hi, top) of ``histogram_update``, and writes, per 64-row slice and tile, the max
    of s - m over the tile (>= its value for the final m)."""
    s = score_tile(q, K, Mask, k_base, mask_base, offs_m, kb * 64 * T + tl.arange(0, 64 * T),
                   offs_d, stride_kn, stride_kd, stride_mm, stride_mn, Nq, Nk, D, scale,
                   IS_CAUSAL, MASK_KIND, PRECISION, BOUNDS)
    s = tl.reshape(s, (R * 64, T, 64))
    tile_max = tl.max(s, 2)
    s_max = tl.max(tile_max, 1)
    m = tl.maximum(m, s_max)
    if HISTOGRAM:
        lo, hi, top = histogram_update(lo, hi, top, s, s_max, m, c)
    rel = tl.where(tile_max == float("-inf"), float("-inf"), tile_max - m[:, None])
    kt = kb * T + tl.arange(0, T)
    tl.store(tm_ptrs[:, None] + kt[None, :], tl.max(tl.reshape(rel, (R, 64, T)), 1),
             mask=(slices < n_tiles_m)[:, None] & (kt < n_tiles_n)[None, :])
    return m, lo, hi, top


@triton.jit
def adasplash_attention_max(
    Q, K, Mask, HeadAlpha, RowMax, TileMax, Tau,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_mb, stride_mh, stride_mm, stride_mn,
    Hq, G, Nq, Nk, D, n_tiles_m, n_tiles_n, scale, alpha,
    IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, ALPHA_MODE: tl.constexpr,
    HEAD_ALPHA: tl.constexpr, PRECISION: tl.constexpr, HISTOGRAM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, T: tl.constexpr,
):
    """Row max, tile-max table and, if HISTOGRAM, the histogram start of tau (written to Tau)."""
    R: tl.constexpr = BLOCK_M // 64
    scale = tl.cast(scale, tl.float32)  # callers may pass float64 scalars (Inductor does)
    pid_m, bh, b, h, hk, n_kt = _program_coords(Hq, G, Nq, Nk, BLOCK_M, IS_CAUSAL)
    if HEAD_ALPHA:
        am1 = tl.load(HeadAlpha + h).to(tl.float32) - 1.0
    else:
        am1 = tl.cast(alpha, tl.float32) - 1.0
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = load_tile(Q + b.to(tl.int64) * stride_qb + h * stride_qh, offs_m, offs_d, stride_qm, stride_qd, Nq, D)
    k_base = b.to(tl.int64) * stride_kb + hk * stride_kh
    mask_base = b.to(tl.int64) * stride_mb + h * stride_mh
    slices = pid_m * R + tl.arange(0, R)
    tm_ptrs = TileMax + (bh.to(tl.int64) * n_tiles_m + slices) * n_tiles_n

    # blocks of T tiles; the interior ones are the blocks of interior tiles only
    n_kb = tl.cdiv(n_kt, T)
    n_free = _interior_tiles(pid_m, Nq, Nk, BLOCK_M, IS_CAUSAL) // T
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    c = am1 * BINS
    lo = tl.zeros([BLOCK_M], tl.int64)
    hi = tl.zeros([BLOCK_M], tl.int64)
    top = tl.full([BLOCK_M], float("-inf"), tl.float32)
    for i in range(0, n_kb - n_free):
        m, lo, hi, top = _max_block(
            q, K, Mask, k_base, mask_base, offs_m, n_kb - 1 - i, offs_d, stride_kn, stride_kd,
            stride_mm, stride_mn, Nq, Nk, D, scale, m, lo, hi, top, c, tm_ptrs, slices, n_tiles_m,
            n_tiles_n, IS_CAUSAL, MASK_KIND, PRECISION, True, HISTOGRAM, R, T)
    for i in range(0, n_free):
        m, lo, hi, top = _max_block(
            q, K, Mask, k_base, mask_base, offs_m, n_free - 1 - i, offs_d, stride_kn, stride_kd,
            stride_mm, stride_mn, Nq, Nk, D, scale, m, lo, hi, top, c, tm_ptrs, slices, n_tiles_m,
            n_tiles_n, IS_CAUSAL, MASK_KIND, PRECISION, False, HISTOGRAM, R, T)
    rows = bh.to(tl.int64) * Nq + offs_m
    tl.store(RowMax + rows, m, mask=offs_m < Nq)
    if HISTOGRAM:
        tl.store(Tau + rows, histogram_start(lo, hi, top, m, c, 1.0 / am1, ALPHA_MODE),
                 mask=offs_m < Nq)


@triton.jit
def _append(List, n, live, values):
    """Store the live entries of values at List[n:], in order; return the new length."""
    tl.store(List + n + tl.cumsum(live.to(tl.int32), 0) - 1, values, mask=live)
    return n + tl.sum(live.to(tl.int32), 0)


@triton.jit
def _live_list(tm_ptrs, slice_ok, List, n_kt, n_free, thr, CHUNK: tl.constexpr):
    """Write to List, in ascending order, the key tiles whose table entry reaches thr for some
    64-row slice; return how many, how many of them are below n_free (the interior ones, first in
    the list), and per slice the largest entry of the tiles left out (every s - m the pass does not
    see is at most that). The same program reads the list back after the barrier."""
    n_live = tl.full([], 0, tl.int32)
    n_int = tl.full([], 0, tl.int32)
    unseen = tl.full(thr.shape, float("-inf"), tl.float32)
    for c in range(0, n_kt, CHUNK):
        kt = c + tl.arange(0, CHUNK)
        tmax = tl.load(tm_ptrs[:, None] + kt[None, :], mask=slice_ok[:, None] & (kt[None, :] < n_kt),
                       other=float("-inf"))
        live = (tl.max((tmax >= thr[:, None]).to(tl.int32), 0) > 0) & (kt < n_kt)
        unseen = tl.maximum(unseen, tl.max(tl.where(live[None, :], float("-inf"), tmax), 1))
        n_live = _append(List, n_live, live, kt)
        n_int += tl.sum((live & (kt < n_free)).to(tl.int32), 0)
    tl.debug_barrier()
    return n_live, n_int, unseen


@triton.jit
def _slice_threshold(t, am1, R: tl.constexpr):
    """Per 64-row slice, the smallest t / (alpha - 1): a tile whose entry (an upper bound of
    s - m) is below it holds no z > t."""
    return tl.min(tl.reshape(t / am1, (R, 64)), 1)


@triton.jit
def _tile_threshold_stats(q, K, Mask, k_base, mask_base, offs_m, offs_n, offs_d, stride_kn,
                          stride_kd, stride_mm, stride_mn, Nq, Nk, D, scale, am1, m, t, k,
                          IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr,
                          PRECISION: tl.constexpr, ALPHA_MODE: tl.constexpr, BOUNDS: tl.constexpr):
    """Per-entry terms of (count, s1, s2, gap) of one key tile at the trial t (``threshold_terms``)."""
    x = shifted_scores(q, K, Mask, k_base, mask_base, offs_m, offs_n, offs_d, stride_kn,
                       stride_kd, stride_mm, stride_mn, Nq, Nk, D, scale, am1, m, t, IS_CAUSAL,
                       MASK_KIND, PRECISION, BOUNDS)
    return threshold_terms(x, ALPHA_MODE, k)


@triton.jit
def adasplash_attention_threshold(
    Q, K, Mask, HeadAlpha, RowMax, TileMax, List, Tau, Stats,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_mb, stride_mh, stride_mm, stride_mn,
    Hq, G, Nq, Nk, D, n_tiles_m, n_tiles_n, scale, alpha,
    IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, ALPHA_MODE: tl.constexpr,
    HEAD_ALPHA: tl.constexpr, PRECISION: tl.constexpr, HISTOGRAM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr, MAX_STEPS: tl.constexpr, LIST_CHUNK: tl.constexpr,
    STATS: tl.constexpr,
):
    """tau per row: threshold passes, each over the tiles that can hold some z > t."""
    R: tl.constexpr = BLOCK_M // 64
    scale = tl.cast(scale, tl.float32)  # callers may pass float64 scalars (Inductor does)
    # Pointers, indices and whatever picks list positions (alpha, the row statistics) are
    # computed here, not returned by helpers: Inductor's analysis of which tensors a kernel writes
    # ties a helper's results to all of its pointer arguments.
    pid_m, bh, b, h, hk, n_kt = _program_coords(Hq, G, Nq, Nk, BLOCK_M, IS_CAUSAL)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    q = load_tile(Q + b.to(tl.int64) * stride_qb + h * stride_qh, offs_m, tl.arange(0, BLOCK_D),
                  stride_qm, stride_qd, Nq, D)
    if HEAD_ALPHA:
        am1 = tl.load(HeadAlpha + h).to(tl.float32) - 1.0
    else:
        am1 = tl.cast(alpha, tl.float32) - 1.0
    k = 1.0 / am1
    slices = pid_m * R + tl.arange(0, R)
    slice_ok = slices < n_tiles_m
    tm_ptrs = TileMax + (bh.to(tl.int64) * n_tiles_m + slices) * n_tiles_n
    List += (bh.to(tl.int64) * tl.num_programs(0) + pid_m) * n_tiles_n
    rows = bh.to(tl.int64) * Nq + offs_m
    m = tl.load(RowMax + rows, mask=offs_m < Nq, other=float("-inf"))
    offs_d = tl.arange(0, BLOCK_D)
    offs_t = tl.arange(0, 64)
    k_base = b.to(tl.int64) * stride_kb + hk * stride_kh
    mask_base = b.to(tl.int64) * stride_mb + h * stride_mh
    empty = m == float("-inf")
    m = tl.where(empty, 0.0, m)
    n_free = _interior_tiles(pid_m, Nq, Nk, BLOCK_M, IS_CAUSAL)

    # start at the sweep's histogram start, or at -1 (the max alone gives p = 1 there); both are
    # inf for empty rows. f(-1) >= 0 >= f(0) brackets tau.
    if HISTOGRAM:
        t = tl.load(Tau + rows, mask=offs_m < Nq, other=float("inf"))
    else:
        t = tl.where(empty, float("inf"), -1.0)
    lo = tl.where(empty, float("inf"), -1.0)
    hi = tl.where(empty, float("inf"), 0.0)
    prev = tl.full([BLOCK_M], -1.0, tl.float32)
    done = empty
    step = 0
    while (step < MAX_STEPS) & (tl.min(done.to(tl.int32), 0) == 0):
        # converged rows keep their t and no longer need their tiles
        thr = _slice_threshold(tl.where(done, float("inf"), t), am1, R)
        n_live, n_int, unseen = _live_list(tm_ptrs, slice_ok, List, n_kt, n_free, thr, LIST_CHUNK)
        count = tl.zeros([BLOCK_M, 64], tl.float32)
        s1 = tl.zeros([BLOCK_M, 64], tl.float32)
        s2 = tl.zeros([BLOCK_M, 64], tl.float32)
        gap = tl.full([BLOCK_M, 64], float("inf"), tl.float32)
        for edge in tl.static_range(2):  # the interior tiles, then the edge ones with checks
            for j in range(n_int if edge else 0, n_live if edge else n_int):
                c0, c1, c2, c3 = _tile_threshold_stats(
                    q, K, Mask, k_base, mask_base, offs_m, tl.load(List + j) * 64 + offs_t,
                    offs_d, stride_kn, stride_kd, stride_mm, stride_mn, Nq, Nk, D, scale, am1,
                    m, t, k, IS_CAUSAL, MASK_KIND, PRECISION, ALPHA_MODE, edge == 1)
                count += c0
                s1 += c1
                s2 += c2
                gap = tl.minimum(gap, c3)
        # no z the pass left out lies above am1 * unseen, so t may move down to there only
        unseen = tl.reshape(tl.broadcast_to(unseen[:, None], (R, 64)), (BLOCK_M,))
        gap = tl.minimum(tl.min(gap, 1), t - am1 * unseen)
        t_next, lo, hi, prev, converged = threshold_step(t, lo, hi, tl.sum(count, 1), tl.sum(s1, 1),
                                                         tl.sum(s2, 1), gap, prev, k, ALPHA_MODE)
        t = tl.where(done, t, t_next)
        done = done | converged
        step += 1
    tl.store(Tau + rows, t, mask=offs_m < Nq)
    if STATS:
        tl.store(Stats + (bh.to(tl.int64) * tl.num_programs(0) + pid_m) * 4, step.to(tl.float32))


@triton.jit
def _bit_or(a, b):
    return a | b


@triton.jit
def _tile_output(acc, acc_u, q, K, V, Mask, k_base, v_base, mask_base, offs_m, offs_n, offs_d,
                 offs_dv, stride_kn, stride_kd, stride_vn, stride_vd, stride_mm, stride_mn, Nq, Nk,
                 D, DV, scale, am1, m, t, k, IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr,
                 PRECISION: tl.constexpr, ALPHA_MODE: tl.constexpr, BOUNDS: tl.constexpr,
                 U_SHIFT: tl.constexpr):
    """One key tile into acc += p v (and, if U_SHIFT, acc_u += u v); returns acc, acc_u, p, u
    (u in v's dtype if U_SHIFT)."""
    x = shifted_scores(q, K, Mask, k_base, mask_base, offs_m, offs_n, offs_d, stride_kn,
                       stride_kd, stride_mm, stride_mn, Nq, Nk, D, scale, am1, m, t, IS_CAUSAL,
                       MASK_KIND, PRECISION, BOUNDS)
    p, u = p_and_u(x, k, ALPHA_MODE)
    v = load_tile(V + v_base, offs_n, offs_dv, stride_vn, stride_vd, Nk, DV)
    acc += tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    if U_SHIFT:
        # u as the product sees it (rounded to v's dtype), so that the normalisation by its sum
        # keeps u_mean an exact average: a part common to the values cancels in u_mean - out
        u = u.to(v.dtype)
        acc_u += tl.dot(u, v, input_precision=PRECISION)
    return acc, acc_u, p, u


@triton.jit
def adasplash_attention_out(
    Q, K, V, Mask, HeadAlpha, RowMax, TileMax, List, Tau, Out, UShift, Stats,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_mb, stride_mh, stride_mm, stride_mn,
    Hq, G, Nq, Nk, D, DV, n_tiles_m, n_tiles_n, scale, alpha,
    IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, ALPHA_MODE: tl.constexpr,
    HEAD_ALPHA: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, LIST_CHUNK: tl.constexpr,
    STATS: tl.constexpr, U_SHIFT: tl.constexpr,
):
    """out = sum_j p_j v_j / sum_j p_j over the tiles live for tau and, if U_SHIFT, the backward's
    u_shift = sum_j u_j v_j / sum_j u_j - out, u = p^(2 - alpha). (A kernel of its own: the list
    it builds then depends on loaded values only, which keeps Inductor's analysis of what the
    kernels write exact.)"""
    R: tl.constexpr = BLOCK_M // 64
    scale = tl.cast(scale, tl.float32)
    # Pointers, indices and whatever picks list positions (alpha, the row statistics) are
    # computed here, not returned by helpers: Inductor's analysis of which tensors a kernel writes
    # ties a helper's results to all of its pointer arguments.
    pid_m, bh, b, h, hk, n_kt = _program_coords(Hq, G, Nq, Nk, BLOCK_M, IS_CAUSAL)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    q = load_tile(Q + b.to(tl.int64) * stride_qb + h * stride_qh, offs_m, tl.arange(0, BLOCK_D),
                  stride_qm, stride_qd, Nq, D)
    if HEAD_ALPHA:
        am1 = tl.load(HeadAlpha + h).to(tl.float32) - 1.0
    else:
        am1 = tl.cast(alpha, tl.float32) - 1.0
    k = 1.0 / am1
    slices = pid_m * R + tl.arange(0, R)
    slice_ok = slices < n_tiles_m
    tm_ptrs = TileMax + (bh.to(tl.int64) * n_tiles_m + slices) * n_tiles_n
    List += (bh.to(tl.int64) * tl.num_programs(0) + pid_m) * n_tiles_n
    rows = bh.to(tl.int64) * Nq + offs_m
    m = tl.load(RowMax + rows, mask=offs_m < Nq, other=float("-inf"))
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    offs_t = tl.arange(0, 64)
    k_base = b.to(tl.int64) * stride_kb + hk * stride_kh
    v_base = b.to(tl.int64) * stride_vb + hk * stride_vh
    mask_base = b.to(tl.int64) * stride_mb + h * stride_mh
    m = tl.where(m == float("-inf"), 0.0, m)
    t = tl.load(Tau + rows, mask=offs_m < Nq, other=float("inf"))

    n_free = _interior_tiles(pid_m, Nq, Nk, BLOCK_M, IS_CAUSAL)
    n_live, n_int, _ = _live_list(tm_ptrs, slice_ok, List, n_kt, n_free,
                                  _slice_threshold(t, am1, R), LIST_CHUNK)
    # Per row: l, l_u, the support size and `held`, whose bit j % 32 says p > 0 on the j-th
    # listed tile. (Per-entry accumulators, summed once at the end, made the pass 4% faster
    # without u_shift, but with it they spill: measured on an H200.)
    # Every 32 tiles the listed tiles on which a whole 64-row slice has no p > 0 get -inf in the
    # table: the backward then skips them.
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    l_u = tl.zeros([BLOCK_M], tl.float32)
    support = tl.zeros([BLOCK_M], tl.float32)
    held = tl.zeros([BLOCK_M], tl.int32)
    bit = tl.arange(0, 32)
    for edge in tl.static_range(2):  # the interior tiles, then the edge ones with checks
        for j in range(n_int if edge else 0, n_live if edge else n_int):
            acc, acc_u, p, u = _tile_output(
                acc, acc_u, q, K, V, Mask, k_base, v_base, mask_base, offs_m,
                tl.load(List + j) * 64 + offs_t, offs_d, offs_dv, stride_kn, stride_kd, stride_vn,
                stride_vd, stride_mm, stride_mn, Nq, Nk, D, DV, scale, am1, m, t, k, IS_CAUSAL,
                MASK_KIND, PRECISION, ALPHA_MODE, edge == 1, U_SHIFT)
            l += tl.sum(p, 1)
            if U_SHIFT:
                l_u += tl.sum(u.to(tl.float32), 1)
            if STATS:
                support += tl.sum((p > 0).to(tl.float32), 1)
            held |= tl.where(tl.max(p, 1) > 0, 1 << (j % 32), 0)
            if (j % 32 == 31) | (j == n_live - 1):
                seen = tl.reduce(tl.reshape(held, (R, 64)), 1, _bit_or)
                listed = j - j % 32 + bit
                kts = tl.load(List + listed, mask=listed <= j, other=0)
                dead = ((seen[:, None] >> bit[None, :]) & 1) == 0
                tl.store(tm_ptrs[:, None] + kts[None, :],
                         tl.full([R, 32], float("-inf"), tl.float32),
                         mask=dead & (listed <= j)[None, :] & slice_ok[:, None])
                held = tl.zeros([BLOCK_M], tl.int32)
    out = acc / tl.where(l > 0, l, 1.0)[:, None]
    out_mask = (offs_m[:, None] < Nq) & (offs_dv[None, :] < DV)
    out = out.to(Out.dtype.element_ty)
    tl.store(Out + rows[:, None] * DV + offs_dv[None, :], out, mask=out_mask)
    if U_SHIFT:
        u_shift = acc_u / tl.where(l_u > 0, l_u, 1.0)[:, None] - out.to(tl.float32)
        tl.store(UShift + rows[:, None] * DV + offs_dv[None, :],
                 u_shift.to(UShift.dtype.element_ty), mask=out_mask)
    if STATS:
        # per program, after the threshold passes: live tiles of the output pass, tiles in range,
        # and the support size summed over its rows
        i = tl.arange(0, 4)
        values = tl.where(i == 1, n_live.to(tl.float32),
                          tl.where(i == 2, n_kt.to(tl.float32), tl.sum(support, 0)))
        tl.store(Stats + (bh.to(tl.int64) * tl.num_programs(0) + pid_m) * 4 + i, values, mask=i > 0)


def _identity(kernel):
    return kernel


def mask_4d(attn_mask):
    """(mask as 4-D, its 4 strides with 0 on broadcast dims, MASK_KIND) for a kernel launch."""
    if attn_mask is None:
        return None, (0, 0, 0, 0), 0
    m = attn_mask.reshape((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))
    strides = tuple(m.stride(i) if m.shape[i] > 1 else 0 for i in range(4))
    return m, strides, 1 if m.dtype == torch.bool else 2


def dot_precision(dtype: torch.dtype) -> str:
    """IEEE dots for float32 inputs (tf32 would cost ~1e-3); tensor cores for 16-bit ones."""
    return "ieee" if dtype == torch.float32 else "tf32"


def attention_forward(q, k, v, attn_mask, is_causal, scale, alpha, head_alpha=None,
                      for_backward=False, launch=_identity, stats=False):
    """(out, tau, row_max, tile_max, u_shift) as ``lowering.reference.attention_forward`` (no
    dropout); u_shift has 0 elements unless for_backward.

    q (B, Hq, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, DV), any strides; head_alpha: None or a
    (Hq,) tensor. With stats=True a sixth output holds, per query block, (threshold passes, live
    tiles of the output pass, admissible tiles, summed support size).
    """
    B, Hq, Nq, D = q.shape
    Hkv, Nk, DV = k.shape[1], k.shape[2], v.shape[-1]
    f32 = dict(dtype=torch.float32, device=q.device)
    out = torch.empty((B, Hq, Nq, DV), dtype=q.dtype, device=q.device)
    u_shift = torch.empty((B, Hq, Nq, DV) if for_backward else (0,), dtype=q.dtype, device=q.device)
    tau = torch.empty((B, Hq, Nq), **f32)
    row_max = torch.empty((B, Hq, Nq), **f32)
    n_tm, n_tn = triton.cdiv(Nq, TILE), triton.cdiv(Nk, TILE)
    tile_max = torch.full((B, Hq, n_tm, n_tn), float("-inf"), **f32)
    block_d, block_dv = max(16, triton.next_power_of_2(D)), max(16, triton.next_power_of_2(DV))
    wide = max(block_d, block_dv) > 128
    dense_m, sparse_m = (64, 64) if wide or Nq <= 64 else (DENSE_BLOCK_M, SPARSE_BLOCK_M)
    n_mb = triton.cdiv(Nq, sparse_m)
    stat_buf = torch.zeros((B, Hq, n_mb, 4), **f32) if stats else row_max
    if B * Hq * Nq == 0:
        return (out, tau, row_max, tile_max, u_shift) + ((stat_buf,) if stats else ())
    mask, ms, mask_kind = mask_4d(attn_mask)
    mask = mask if mask is not None else q
    scale = float(scale if scale is not None else D ** -0.5)
    common = dict(IS_CAUSAL=bool(is_causal), MASK_KIND=mask_kind, PRECISION=dot_precision(q.dtype),
                  BLOCK_D=block_d)
    per_head = head_alpha is not None
    ha = head_alpha if per_head else q
    mode = alpha_mode(alpha, per_head)
    common.update(ALPHA_MODE=mode, HEAD_ALPHA=per_head)
    histogram = mode in HISTOGRAM_MODES
    launch(adasplash_attention_max)[(triton.cdiv(Nq, dense_m), B * Hq)](
        q, k, mask, ha, row_max, tile_max, tau, *q.stride(), *k.stride(), *ms,
        Hq, Hq // Hkv, Nq, Nk, D, n_tm, n_tn, scale, float(alpha), BLOCK_M=dense_m,
        T=1 if wide else DENSE_KEY_TILES, HISTOGRAM=histogram, **common,
        num_warps=8 if dense_m == 128 else 4, num_stages=1 if wide else 2,
    )
    live_list = torch.empty((B * Hq * n_mb * n_tn,), dtype=torch.int32, device=q.device)
    sparse = dict(BLOCK_M=sparse_m, LIST_CHUNK=LIST_CHUNK, STATS=stats, **common,
                  num_warps=8 if sparse_m == 128 else 4, num_stages=1 if wide else 2)
    launch(adasplash_attention_threshold)[(n_mb, B * Hq)](
        q, k, mask, ha, row_max, tile_max, live_list, tau, stat_buf,
        *q.stride(), *k.stride(), *ms, Hq, Hq // Hkv, Nq, Nk, D, n_tm, n_tn, scale, float(alpha),
        MAX_STEPS=MAX_STEPS, HISTOGRAM=histogram, **sparse,
    )
    launch(adasplash_attention_out)[(n_mb, B * Hq)](
        q, k, v, mask, ha, row_max, tile_max, live_list, tau, out, u_shift if for_backward else out,
        stat_buf,
        *q.stride(), *k.stride(), *v.stride(), *ms,
        Hq, Hq // Hkv, Nq, Nk, D, DV, n_tm, n_tn, scale, float(alpha), BLOCK_DV=block_dv,
        U_SHIFT=bool(for_backward), **sparse,
    )
    return (out, tau, row_max, tile_max, u_shift) + ((stat_buf,) if stats else ())
