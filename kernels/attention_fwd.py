"""Block-sparse alpha-entmax attention forward (AdaSplash-2 style), three kernels.

For a block of BLOCK_M query rows of one head, with s = scale q k^T + mask (-inf where excluded):

1. ``adasplash_attention_max`` (dense): one sweep over the admissible key tiles (from the last
   down, so that for causal, local attention the row max comes first) gives the row max m and
   the row table, scratch for the forward: per row and tile the max of y = (alpha - 1)(s - r) in
   int8 steps of 1/127 (``_row_code``), r the row max over the last REF_TILES admissible key
   tiles: a fixed reference, so that z = y - (alpha - 1)(m - r) is bounded above, and from below
   to within a step, by it. (Rows attend to different tiles: the output pass visited 1.9x the
   tiles that hold some p > 0 with lists from a table per 64-row slice at block sparsity 0.74,
   1.01x with the row table.) For the alphas of ``HISTOGRAM_MODES`` the sweep also counts the
   scores near the max in 8 bins and writes a start for tau, within one bin of it
   (``histogram.py``).
2. ``adasplash_attention_threshold`` (sparse): with z = (alpha - 1)(s - m) (max 0), threshold
   passes (``threshold.py``) over the tiles whose row-table bound reaches t for one of the rows,
   until the support is proven unchanged (t = tau). The candidates, the tiles with some z > -1,
   are listed first from the row table; every pass takes its list from them. Listing them
   writes the slice table, which the backward reads: per TILE x TILE tile an upper bound of
   max (s_ij - m_i) over the tile from the row table, -inf on tiles that are no candidates. (The
   sweep wrote it before, reducing its tile maxima over 64 rows at every step: on an H200 at N =
   16k the sweep took 1.07 -> 0.95 ms without it, its loop 375 -> 287 instructions, 10 -> 5
   barriers; listing the candidates from all key tiles instead of those the slice table let
   through cost 0.04 ms at block sparsity 0.90.) The passes start at the histogram's start, at
   steps toward the threshold of the row's tile maxima (``_table_start``, for blocks with many
   candidates), or at -1 <= tau.
   The proof's gap is cut at the largest bound of the tiles a pass skipped.
   For alpha 1.5 and 2 (no histogram) the start is a lower bound of tau (its last step a Newton
   step) and the first pass lists every z above it (``listing.py``): a row whose lists hold them
   all takes tau from them, with no further pass (on an H100, dense rows: 2.79 -> 1.21 passes per
   query block at N = 4k, 2.51 -> 1.09 at 16k; the listing pass costs about 1.7 normal passes,
   taking tau from the lists 0.07-0.16 ms per call).
3. ``adasplash_attention_out`` (sparse): visits the candidates live for tau:
   out = sum_j p_j v_j / sum_j p_j, p = [z - tau]_+^(1/(alpha-1)) (the division is exact for the
   exact tau and absorbs rounding). For the backward it can also give u_shift = u_mean - out
   (out as stored, in its dtype), u_mean = sum_j u_j v_j / sum_j u_j, u = p^(2 - alpha), from
   which delta = rowsum(dO (out + u_shift)) (the entmax form of flash attention's rowsum(dO out);
   a part common to the values, which the backward cancels, lies in out, stored exactly). The
   tiles left out, and visited tiles whose weights are all zero for a 64-row slice, get -inf in
   the slice table, so that the backward visits only the tiles that hold some p > 0.

The row table takes Nq x (key tiles) bytes per head (64 MiB for 16 heads at N = 16k); where it
would take more than ROW_TABLE_BYTES the heads run in groups.

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
from .listing import LIST_STRIDE, list_entries, resolve_lists
from .threshold import entmax15_step, p_and_u, threshold_terms, threshold_step
from .tiles import (key_tile, load_tile, mask_scores, mask_tile, pointer_mask_tile, score_tile,
                    shifted_scores, value_tile)

TILE = 64
MAX_STEPS = 32
RESOLVE_STEPS = 8  # threshold steps on a row's lists at most (``listing.resolve_lists``)
LIST_CHUNK = 128
ROW_CHUNK = tl.constexpr(64)  # key tiles per step through the row table (128 spills the passes)
# The row table's start for tau (``_table_start``), for query blocks with at least
# TABLE_START_TILES candidate tiles, and a quarter of their key tiles or more (else starting at -1
# was measured faster: on an H100 at N = 16k, the start for every block cut the threshold passes
# 5.9 -> 4.8 ms at block sparsity 0 and 1.9 -> 1.8 at 0.74, but cost 0.84 -> 1.09 ms at 0.90,
# where blocks have few candidates): TABLE_STEPS updates where 3/4 of the key tiles or more are
# candidates, 1 elsewhere. Each update rereads the table, latency bound: on the same H100, the
# threshold kernel took 4.56 / 1.65 ms at block sparsity 0 / 0.74 with 3 updates everywhere,
# 4.45 / 1.54 with 2, 5.38 / 1.44 with 1 (3.15 passes at 0 instead of 2.71), 4.48 / 1.48 as now.
TABLE_STEPS = tl.constexpr(2)
# Key tiles per step of the start through the table: a block shape of its own, so that the
# compiler lays its loads out apart from the lists' (64 tiles, 16 rows per thread; the start's
# rows then come in runs of 4, see ``_table_start``). Compiled for sm_90 (Triton 3.6) a chunk
# sum took 990 instructions per 64 tiles (156 shuffles), 220 per 32 tiles now (none), and the
# per-entry sums are reduced once per update. On an H100 (bf16, causal, D = 128, block sparsity
# 0 / 0.5 / 0.9) the threshold kernel took 0.91 -> 0.85 / 0.56 -> 0.50 / 0.26 -> 0.25 ms at
# N = 4k x 4 and 2.46 -> 2.29 / 1.50 -> 1.34 / 0.56 -> 0.54 ms at 16k.
START_CHUNK = 32
TABLE_START_TILES = tl.constexpr(8)
# Query rows per program of the dense and the sparse kernel (head dims up to 128; 64 above).
DENSE_BLOCK_M = 128
# Key tiles per step of the dense sweep: 4 for 16-bit inputs without a mask (fewer row-table
# stores: the sweep took 1.55 ms with 2, 1.33 with 4 on an H100 at N = 16k, H = 16, D = 128);
# 2 for float32 (4 spills heavily and takes 90 s to compile) and with a mask (4 needs 288 KiB of
# shared memory at D = 128, more than a Hopper card's 227 KiB, and spills).
DENSE_KEY_TILES = 4
DENSE_KEY_TILES_NARROW = 2
# Up to SHORT_SWEEP_KEYS keys the 16-bit sweep without a mask also steps 2 tiles, in 2 pipeline
# stages: compiled for sm_90 it then takes 106 registers and 97 KiB of shared memory (223
# registers and 227 KiB in 4-tile steps), so two programs share an SM and one's first loads and
# last stores overlap the other's steps, which weigh more where rows are short. On an H200
# (B = 4, H = 16, N = 4k, D = 128, bf16, causal) the sweep took 0.325 -> 0.289 ms; at N = 16k
# (B = 1) 0.948 -> 0.955.
SHORT_SWEEP_KEYS = 4096
# The row table's reference r is the row max over the last REF_TILES admissible key tiles, the
# first the sweep visits. The sweep's first block can hold fewer (2 of 4 tiles for every other
# 128-row block of a causal mask: the diagonal ones, of which a block's first rows see few
# keys); the tiles it lacks are scored once more before the sweep. An r from fewer keys makes
# more entries saturate and the table's start lower: on an H100 (N = 16k, H = 16, D = 128, bf16,
# causal) dense rows took 2.71 threshold passes with r from the first block alone, 2.52 with r
# from 4 tiles (threshold kernel 4.11 -> 3.62 ms, the sweep unchanged), 2.38 from 8 (but the
# sweep, then scoring 8 tiles more per block, took 1.25 -> 1.33 ms). Sweeps of fewer tiles per
# step (float32 and masked: 2, D > 128: 1) score 2 or 3 tiles apart for every block (not timed).
REF_TILES = tl.constexpr(4)
# That 4-tile sweep runs in 3 pipeline stages: on an H100 (N = 16k, H = 16, D = 128, alpha = 1.5)
# it took 1.30-1.34 ms with 2 stages, 1.22-1.25 with 3, at block sparsity 0, 0.90 and 0.96; with
# its key blocks loaded by the tensor memory accelerator (``tile_descriptor``, where k's layout
# allows) 1.12-1.13 against 1.24-1.26 ms (same outputs). It then takes SHARED_MEMORY bytes of
# shared memory at D = 128 in 16 bits (sm_90; 1 KiB of it since the REF_TILES tiles are scored
# apart, 1 KiB for the descriptor's loads), the most of any attention kernel here (compiled for
# sm_90: 2 stages 161 KiB, the float32 backward 144 KiB): the kernels are meant for cards that
# give a program that much (a Hopper card has 227 KiB, all of it); ``lowering.routing`` sends
# other cards to the reference.
SHARED_MEMORY = 232448
SPARSE_BLOCK_M = 64  # measured faster than 128 (tighter live-tile lists)
# Input dtypes whose threshold and output passes load key and value tiles through TMA descriptors
# of k and v (``tile_descriptor``, in eager calls). On an H100 (N = 16k, H = 16, bf16, causal,
# alpha 1.5; the same code with pointers, same outputs): at D = 128 the threshold kernel took
# 3.56-3.60 -> 3.50-3.54 ms and the output kernel 2.54-2.56 -> 2.33-2.34 at block sparsity 0,
# the three kernels 2.17-2.18 -> 2.14-2.15 ms at 0.90; at D = 256 and 64 the forward was
# 10-17% faster. Compiled for sm_90, float32 passes through descriptors spill far more (the
# threshold kernel at D = 128 keeps 10.9 KB on the stack instead of 1.9), so float32 loads
# through pointers.
PASS_TMA_DTYPES = (torch.float16, torch.bfloat16)
# Pipeline stages of the threshold kernel where its key tiles come through a descriptor (D up to
# 128; 2 elsewhere): on the same H100 it took 3.47-3.56 -> 3.38 ms at block sparsity 0 and
# 0.68-0.69 -> 0.66 ms at 0.90 with 3 (1: 3.71 and 0.69), and in a second run 3.50 -> 3.34 and
# 0.68 -> 0.66-0.67; same outputs, shared memory and registers (compiled for sm_90). The output
# kernel was no faster with 3 (2.31-2.35 -> 2.31).
THRESHOLD_TMA_STAGES = 3
# Registers per thread of the threshold kernel (``maxnreg``) for 16-bit inputs without a mask, D
# up to 128 and alpha 1.5 or 2: three programs then share an SM, where ptxas, free to take 255,
# left room for two (the passes are bound by latency). On an H100 (N = 16k, H = 16, D = 128,
# bf16, causal, alpha 1.5) the kernel took 4.47 -> 4.05 ms at block sparsity 0 and 0.80 -> 0.69
# ms at 0.90; 152 and 128 registers were slower. Compiled for sm_90 it spills 28 bytes there,
# none inside the passes' loops (none for alpha 2), but 260-5600 bytes with a mask or another
# alpha, which keep no cap.
# Inductor launches the kernels it emits without one, so under torch.compile the kernel runs
# uncapped (``attention_forward``'s direct_launch).
THRESHOLD_REGISTERS = 168
# The row table codes z in steps of 1 / CODE_UNIT. It holds Nq x (key tiles) bytes per head; a
# forward whose table would exceed ROW_TABLE_BYTES runs its heads in groups that fit (one at least).
CODE_UNIT = tl.constexpr(127.0)
ROW_TABLE_BYTES = 1 << 28
# ALPHA_MODEs whose threshold passes start from the sweep's histogram (``histogram.py``); the
# others start from t = -1. The histogram pays for itself only where passes are costly: measured
# on an H200 (N = 16k, H = 16, D = 128, bf16, causal), it makes the sweep 1.1 -> 2.1-3.1 ms and
# cuts the passes per query block 5.5 -> 3.0 (alpha 1.3), 5.9 -> 2.6 (alpha 2) and 3.9 -> 2.1
# (alpha 1.5), and the forward is 34% / 25% / 5% faster at block sparsity 0 (alpha 2: 0.17), 8%
# faster at 0.72 for alpha 1.3, but 17-30% slower for alpha 1.5 and 2 at block sparsity >= 0.74.
HISTOGRAM_MODES = (0,)


@triton.jit
def _program_coords(Hq, G, Nq, Nk, BH0, BLOCK_M: tl.constexpr, IS_CAUSAL: tl.constexpr):
    """(pid_m, bh, b, h, kv head, number of key tiles to visit) of a launch over the heads
    BH0, BH0 + 1, ... of the flattened batch x heads; longest causal blocks first."""
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    bh = BH0 + tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    if IS_CAUSAL:
        n_kt = tl.cdiv(tl.minimum(Nk, (pid_m + 1) * BLOCK_M), 64)
    else:
        n_kt = tl.cdiv(Nk, 64)
    return pid_m, bh, b, h, h // G, n_kt


@triton.jit
def _mask_coords(b, h, stride_mb, stride_mh):
    """The batch and head coordinates of the mask descriptor's boxes: 0 on dims the mask
    broadcasts (stride 0)."""
    return tl.where(stride_mb != 0, b, 0), tl.where(stride_mh != 0, h, 0)


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
def _row_entries(rt_base, offs_m, kt, Nq):
    """Pointers to the row table's entries of rows offs_m and key tiles kt, a (rows x tiles)
    block: the table of a head is stored tile by tile, (key tiles, Nq)."""
    return rt_base + kt[None, :] * Nq + offs_m[:, None]


@triton.jit
def _load_codes(rt_base, offs_m, kt, Nq, tile_ok):
    """The row table's entries of rows offs_m and key tiles kt, -128 (no z) outside the rows and
    where tile_ok is False. (Not through the load's `other`: Triton 3.6 fills masked int8 lanes
    of a vector load with -1 there.)"""
    valid = (offs_m < Nq)[:, None] & tile_ok[None, :]
    code = tl.load(_row_entries(rt_base, offs_m, kt, Nq), mask=valid, other=0)
    return tl.where(valid, code, -128)


@triton.jit
def _row_code(rel, am1):
    """The row table's entry for a tile on which a row's largest s - r is rel (r: the row's
    reference, ``_max_block``): the int8 c with (c - 1) / CODE_UNIT <= y < c / CODE_UNIT,
    y = (alpha - 1) rel; -128 for y < -1 (no pass needs it: z <= y and t >= -1) and 127 for
    y >= 126 / CODE_UNIT, which bounds nothing."""
    c = tl.floor(am1 * rel * CODE_UNIT) + 1.0
    return tl.minimum(tl.maximum(c, -128.0), 127.0).to(tl.int8)


@triton.jit
def _max_block(q, K, KDesc, Mask, MDesc, k_base, b, hk, mask_base, mb, mh, m0, offs_m, kb, offs_d,
               stride_kn, stride_kd, stride_mm, stride_mn, Nq, Nk, D, scale, am1, m, ref, lo, hi,
               top, c, rt_base, n_tiles_n, IS_CAUSAL: tl.constexpr,
               MASK_KIND: tl.constexpr, MASK_TMA: tl.constexpr, PRECISION: tl.constexpr,
               BOUNDS: tl.constexpr, HISTOGRAM: tl.constexpr, KEY_TMA: tl.constexpr,
               MAX_THEN_SCALE: tl.constexpr, R: tl.constexpr, T: tl.constexpr):
    """One block of T key tiles of the dense sweep: updates the row max m, the reference r and,
    if HISTOGRAM, the counts (lo, hi, top) of ``histogram_update``, and writes the max over each
    tile of s - r per row, coded (``_row_code``). r is the reference the sweep set before its
    first block (-inf for a row that had no admissible key in it: then the running max after
    this block): fixed, so that the readers take its distance to the final m off (the running
    max itself, rising after the first tiles are coded, would make their entries useless as
    values of z). MAX_THEN_SCALE (scale > 0, no float mask, no histogram): m, r and the tile
    maxima are those of q k^T, unscaled (the caller scales m and r at the end), and the codes
    take (tile max - r) scale, one product per row and tile instead of one per score; the same
    values up to rounding, as rounding a product by scale > 0 is monotone in the other factor.
    (On an H100, N = 16k, H = 16, D = 128, bf16, causal: the sweep took 1.11-1.13 -> 1.06-1.07
    ms, its loop 529 -> 375 instructions.) No product then feeds a subtraction, which the
    compiler may fuse into one rounding: compiled so (2-tile steps, sm_90), tile max scale - r
    came out below 0 on rows' max tiles, whose code dropped to 0, the table's start and the
    first pass's lists lower; the threshold kernel took 5-14% longer at block sparsity 0.5 (H200,
    N = 4k and 16k)."""
    offs_n = kb * 64 * T + tl.arange(0, 64 * T)
    kt = key_tile(K, KDesc, k_base, b, hk, kb * 64 * T, offs_n, offs_d, stride_kn, stride_kd, Nk,
                  D, KEY_TMA)
    mt = mask_tile(Mask, MDesc, mask_base, mb, mh, m0, kb * 64 * T, offs_m, offs_n, stride_mm,
                   stride_mn, Nq, Nk, MASK_KIND, MASK_TMA)
    if MAX_THEN_SCALE:
        qk = mask_scores(tl.dot(q, kt, input_precision=PRECISION), mt, offs_m, offs_n, Nq, Nk,
                         IS_CAUSAL, MASK_KIND, BOUNDS)
        tile_max = tl.max(tl.reshape(qk, (R * 64, T, 64)), 2)
    else:
        s = tl.reshape(score_tile(q, kt, mt, offs_m, offs_n, Nq, Nk, scale, IS_CAUSAL, MASK_KIND,
                                  PRECISION, BOUNDS), (R * 64, T, 64))
        tile_max = tl.max(s, 2)
    s_max = tl.max(tile_max, 1)
    m = tl.maximum(m, s_max)
    ref = tl.where(ref == float("-inf"), m, ref)
    if HISTOGRAM:
        lo, hi, top = histogram_update(lo, hi, top, s, s_max, m, c)
    kt = kb * T + tl.arange(0, T)
    # (r = -inf only on rows whose tile maxima are all -inf)
    rel_ref = tile_max - tl.where(ref == float("-inf"), 0.0, ref)[:, None]
    if MAX_THEN_SCALE:
        rel_ref = rel_ref * scale
    tl.store(_row_entries(rt_base, offs_m, kt, Nq), _row_code(rel_ref, am1),
             mask=(offs_m < Nq)[:, None] & (kt < n_tiles_n)[None, :])
    return m, ref, lo, hi, top


@triton.jit
def adasplash_attention_max(
    Q, K, KDesc, Mask, MDesc, HeadAlpha, RowMax, RowTable, RowRef, Tau,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_mb, stride_mh, stride_mm, stride_mn,
    Hq, G, Nq, Nk, D, n_tiles_n, BH0, scale, alpha,
    IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, MASK_TMA: tl.constexpr,
    ALPHA_MODE: tl.constexpr, HEAD_ALPHA: tl.constexpr, PRECISION: tl.constexpr,
    HISTOGRAM: tl.constexpr, KEY_TMA: tl.constexpr, MAX_THEN_SCALE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, T: tl.constexpr,
):
    """Row max, the row table of this launch's heads and, if HISTOGRAM, the histogram start of
    tau (written to Tau). KEY_TMA: the sweep's key blocks come
    through KDesc, a descriptor of K in (1, 1, 64 T, BLOCK_D) boxes (``tile_descriptor``);
    MASK_TMA: the mask's blocks through MDesc (``mask_tile``, ``mask_descriptor``)."""
    R: tl.constexpr = BLOCK_M // 64
    scale = tl.cast(scale, tl.float32)  # callers may pass float64 scalars (Inductor does)
    pid_m, bh, b, h, hk, n_kt = _program_coords(Hq, G, Nq, Nk, BH0, BLOCK_M, IS_CAUSAL)
    if HEAD_ALPHA:
        am1 = tl.load(HeadAlpha + h).to(tl.float32) - 1.0
    else:
        am1 = tl.cast(alpha, tl.float32) - 1.0
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = load_tile(Q + b.to(tl.int64) * stride_qb + h * stride_qh, offs_m, offs_d, stride_qm, stride_qd, Nq, D)
    k_base = b.to(tl.int64) * stride_kb + hk * stride_kh
    mask_base = b.to(tl.int64) * stride_mb + h * stride_mh
    mb, mh = _mask_coords(b, h, stride_mb, stride_mh)
    rt_base = RowTable + tl.program_id(1).to(tl.int64) * n_tiles_n * Nq

    # blocks of T tiles; the interior ones are the blocks of interior tiles only
    n_kb = tl.cdiv(n_kt, T)
    n_free = _interior_tiles(pid_m, Nq, Nk, BLOCK_M, IS_CAUSAL) // T
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    ref = m
    c = am1 * BINS
    lo = tl.zeros([BLOCK_M], tl.int64)
    hi = tl.zeros([BLOCK_M], tl.int64)
    top = tl.full([BLOCK_M], float("-inf"), tl.float32)
    # m starts at the max over those of the last REF_TILES admissible key tiles that the sweep's
    # first block does not hold, so that r, set after that block, covers them all (REF_TILES);
    # m and r of q k^T if MAX_THEN_SCALE (``_max_block``)
    unit = 1.0 if MAX_THEN_SCALE else scale
    for kt in range(tl.maximum(n_kt - REF_TILES, 0), (n_kb - 1) * T):
        offs_n = kt * 64 + tl.arange(0, 64)
        mt = pointer_mask_tile(Mask, mask_base, offs_m, offs_n, stride_mm, stride_mn, Nq, Nk,
                               MASK_KIND)
        s = score_tile(q, load_tile(K + k_base, offs_d, offs_n, stride_kd, stride_kn, D, Nk), mt,
                       offs_m, offs_n, Nq, Nk, unit, IS_CAUSAL, MASK_KIND, PRECISION, True)
        m = tl.maximum(m, tl.max(s, 1))
    for i in range(0, n_kb - n_free):
        m, ref, lo, hi, top = _max_block(
            q, K, KDesc, Mask, MDesc, k_base, b, hk, mask_base, mb, mh, pid_m * BLOCK_M, offs_m,
            n_kb - 1 - i, offs_d, stride_kn, stride_kd, stride_mm, stride_mn, Nq, Nk, D, scale, am1,
            m, ref, lo, hi, top, c, rt_base, n_tiles_n, IS_CAUSAL,
            MASK_KIND, MASK_TMA, PRECISION, True, HISTOGRAM, KEY_TMA, MAX_THEN_SCALE, R, T)
    for i in range(0, n_free):
        m, ref, lo, hi, top = _max_block(
            q, K, KDesc, Mask, MDesc, k_base, b, hk, mask_base, mb, mh, pid_m * BLOCK_M, offs_m,
            n_free - 1 - i, offs_d, stride_kn, stride_kd, stride_mm, stride_mn, Nq, Nk, D, scale,
            am1, m, ref, lo, hi, top, c, rt_base, n_tiles_n, IS_CAUSAL,
            MASK_KIND, MASK_TMA, PRECISION, False, HISTOGRAM, KEY_TMA, MAX_THEN_SCALE, R, T)
    if MAX_THEN_SCALE:
        m = m * scale
        ref = ref * scale
    rows = bh.to(tl.int64) * Nq + offs_m
    tl.store(RowMax + rows, m, mask=offs_m < Nq)
    tl.store(RowRef + tl.program_id(1).to(tl.int64) * Nq + offs_m, ref, mask=offs_m < Nq)
    if HISTOGRAM:
        tl.store(Tau + rows, histogram_start(lo, hi, top, m, c, 1.0 / am1, ALPHA_MODE),
                 mask=offs_m < Nq)


@triton.jit
def _append(List, n, live, values):
    """Store the live entries of values at List[n:], in order; return the new length."""
    tl.store(List + n + tl.cumsum(live.to(tl.int32), 0) - 1, values, mask=live)
    return n + tl.sum(live.to(tl.int32), 0)


@triton.jit
def _chunk_tiles(Src, c, n_src, CHUNK: tl.constexpr):
    """The key tiles Src[c:c + CHUNK] of a list of n_src, and which exist."""
    i = c + tl.arange(0, CHUNK)
    ok = i < n_src
    return tl.load(Src + i, mask=ok, other=0), ok


@triton.jit
def _live_list(rt_base, offs_m, Nq, shift, Src, n_src, List, n_free, t, tm_ptrs, slice_ok, am1,
               MARK: tl.constexpr, CHUNK: tl.constexpr):
    """Write to List, in ascending order, the tiles of the ascending list Src[:n_src] (Src None:
    the tiles 0, 1, ..., n_src - 1) that can hold some z > t: those whose bound c / CODE_UNIT -
    shift (c: the row table's entry, 1e30 for a saturated one; shift = (alpha - 1)(m - r) per
    row) reaches t for one of the rows (t = +inf: the row needs none). Return how many, how many
    of them are below n_free (the interior ones, first in the list), and per row the largest bound
    of the tiles left out. MARK 1: set the slice table of those to -inf; 2: and that of the tiles
    listed to their largest bound / (alpha - 1), which bounds max (s - m) over the tile from above.
    The same program reads the list back after the barrier."""
    n_live = tl.full([], 0, tl.int32)
    n_int = tl.full([], 0, tl.int32)
    unseen = tl.full(t.shape, float("-inf"), tl.float32)
    for c in range(0, n_src, CHUNK):
        if Src is None:
            kt = c + tl.arange(0, CHUNK)
            ok = kt < n_src
        else:
            kt, ok = _chunk_tiles(Src, c, n_src, CHUNK)
        # ``_load_codes`` written out: the stores below depend on it, and Inductor's analysis of
        # what a kernel writes ties a helper's results to all of its arguments
        valid = (offs_m < Nq)[:, None] & ok[None, :]
        code = tl.load(_row_entries(rt_base, offs_m, kt, Nq), mask=valid, other=0)
        bound = tl.where(code == 127, 1e30, code.to(tl.float32) / CODE_UNIT - shift[:, None])
        bound = tl.where(valid, bound, float("-inf"))
        live = (tl.max((bound >= t[:, None]).to(tl.int32), 0) > 0) & ok
        unseen = tl.maximum(unseen, tl.max(tl.where(live[None, :], float("-inf"), bound), 1))
        if MARK == 2:  # per 64-row slice
            R: tl.constexpr = offs_m.shape[0] // 64
            reach = tl.max(tl.reshape((bound >= t[:, None]).to(tl.int32), (R, 64, CHUNK)), 1) > 0
            top = tl.max(tl.reshape(bound, (R, 64, CHUNK)), 1)
            tl.store(tm_ptrs[:, None] + kt[None, :], tl.where(reach, top / am1, float("-inf")),
                     mask=slice_ok[:, None] & ok[None, :])
        elif MARK == 1:
            tl.store(tm_ptrs[:, None] + kt[None, :], float("-inf"),
                     mask=slice_ok[:, None] & (ok & ~live)[None, :])
        n_live = _append(List, n_live, live, kt)
        n_int += tl.sum((live & (kt < n_free)).to(tl.int32), 0)
    tl.debug_barrier()
    return n_live, n_int, unseen


@triton.jit
def _table_start(rt_base, m0, Nq, shift, Src, n_src, empty, k, Scratch, BLOCK_M: tl.constexpr,
                 ALPHA_MODE: tl.constexpr, steps, CHUNK: tl.constexpr):
    """A start for tau at or below it, from the row table alone: `steps` updates from -1 toward
    the threshold of the row's tile maxima, each taken at (c - 1) / CODE_UNIT - shift, at most
    the tile's largest z. That threshold is at most tau (a subset of a row's z, made smaller,
    has a smaller f). The last update is a Newton step, t + f / |f'|, which lands at or below it
    from either side (f is convex); for alpha 1.5 the ones before it are the passes' closed-form
    or model steps (``entmax15_step``), which may land above it. Only the tiles of Src[:n_src]
    count, which must hold every tile with some z > -1. (No proofs or brackets here:
    ``threshold_step`` on the 16 rows that each thread held of the table's tiles took a sixth of
    the threshold kernel's time at N = 4k.)"""
    tl.static_assert(ALPHA_MODE != 0, "the table's start is for alpha 1.5 and 2")
    i = tl.arange(0, BLOCK_M)
    # the rows m0 + i, written so that the compiler sees runs of 4 (not BLOCK_M) consecutive
    # ones: it then loads the table in 4 rows per thread and many tiles (not 16 rows and 2),
    # and a row's sums over the tiles take 1 exchange between threads, not 3 for each of 16 rows
    offs_m = m0 + (i // 4) * 4 + i % 4
    t = tl.where(empty, float("inf"), -1.0)
    for step in range(0, steps):
        # per-entry sums, reduced over the tiles once per step (one exchange between warps)
        count = tl.zeros([BLOCK_M, CHUNK], tl.float32)
        s1 = tl.zeros([BLOCK_M, CHUNK], tl.float32)
        s2 = tl.zeros([BLOCK_M, CHUNK], tl.float32)
        for c in range(0, n_src, CHUNK):
            kt, ok = _chunk_tiles(Src, c, n_src, CHUNK)
            code = _load_codes(rt_base, offs_m, kt, Nq, ok)
            y = (code.to(tl.float32) - 1.0) / CODE_UNIT - shift[:, None]
            c0, c1, c2, _ = threshold_terms(y - t[:, None], ALPHA_MODE, k)
            count += c0
            s1 += c1
            s2 += c2
        count = tl.sum(count, 1)
        s1 = tl.sum(s1, 1)
        s2 = tl.sum(s2, 1)
        # the update with one row per thread: through Scratch (5 BLOCK_M float32), as a 1-D
        # block of rows, and back
        tl.store(Scratch + i, count)
        tl.store(Scratch + BLOCK_M + i, s1)
        tl.store(Scratch + 2 * BLOCK_M + i, s2)
        tl.store(Scratch + 3 * BLOCK_M + i, t)
        tl.debug_barrier()
        count = tl.load(Scratch + i)
        s1 = tl.load(Scratch + BLOCK_M + i)
        s2 = tl.load(Scratch + 2 * BLOCK_M + i)
        t1 = tl.load(Scratch + 3 * BLOCK_M + i)
        if ALPHA_MODE == 2:  # f = s1 - 1, f' = -count: the closed form is Newton's step
            delta = (s1 - 1.0) / tl.where(count > 0, count, 1.0)
        elif step < steps - 1:
            delta, _ = entmax15_step(t1, count, s1, s2)
        else:  # f = s2 - 1, f' = -2 s1 (s1 = sum d, s2 = sum d^2)
            delta = (s2 - 1.0) / tl.where(s1 > 0, 2.0 * s1, 1.0)
        tl.store(Scratch + 4 * BLOCK_M + i, tl.where(count > 0, t1 + delta, t1))
        tl.debug_barrier()
        t = tl.load(Scratch + 4 * BLOCK_M + i)
    return t


@triton.jit
def _fold(c0, c1, c2, c3):
    """Per-entry terms of a (rows, 64) key tile folded to (rows, 8): the sums of c0, c1, c2 and
    the min of c3 over the 8 groups of 8 columns. A thread of the tensor cores' 64-wide
    accumulator holds the same columns of every group, so the fold stays in its registers: the
    passes' per-entry accumulators take 8x fewer registers for the same number of additions."""
    rows: tl.constexpr = c0.shape[0]
    return (tl.sum(tl.reshape(c0, (rows, 8, 8)), 1), tl.sum(tl.reshape(c1, (rows, 8, 8)), 1),
            tl.sum(tl.reshape(c2, (rows, 8, 8)), 1), tl.min(tl.reshape(c3, (rows, 8, 8)), 1))


@triton.jit
def _tile_shifted_scores(q, K, KDesc, Mask, MDesc, k_base, b, hk, mask_base, mb, mh, m0, offs_m,
                         n0, offs_t, offs_d, stride_kn, stride_kd, stride_mm, stride_mn, Nq, Nk, D,
                         scale, am1, m, t, IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr,
                         MASK_TMA: tl.constexpr, PRECISION: tl.constexpr, BOUNDS: tl.constexpr,
                         KEY_TMA: tl.constexpr):
    """x = z - t on the key tile from n0 (``shifted_scores``), its key and mask tiles loaded
    (``key_tile``, ``mask_tile``)."""
    offs_n = n0 + offs_t
    kt = key_tile(K, KDesc, k_base, b, hk, n0, offs_n, offs_d, stride_kn, stride_kd, Nk, D, KEY_TMA)
    mt = mask_tile(Mask, MDesc, mask_base, mb, mh, m0, n0, offs_m, offs_n, stride_mm, stride_mn, Nq,
                   Nk, MASK_KIND, MASK_TMA)
    return shifted_scores(q, kt, mt, offs_m, offs_n, Nq, Nk, scale, am1, m, t, IS_CAUSAL,
                          MASK_KIND, PRECISION, BOUNDS)


@triton.jit
def _tile_threshold_stats(q, K, KDesc, Mask, MDesc, k_base, b, hk, mask_base, mb, mh, m0, offs_m,
                          n0, offs_t, offs_d, stride_kn, stride_kd, stride_mm, stride_mn, Nq, Nk, D,
                          scale, am1, m, t, k, IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr,
                          MASK_TMA: tl.constexpr,
                          PRECISION: tl.constexpr, ALPHA_MODE: tl.constexpr, BOUNDS: tl.constexpr,
                          KEY_TMA: tl.constexpr):
    """Per-entry terms of (count, s1, s2, gap) of the key tile from n0 at the trial t
    (``threshold_terms``), folded (``_fold``)."""
    x = _tile_shifted_scores(q, K, KDesc, Mask, MDesc, k_base, b, hk, mask_base, mb, mh, m0, offs_m,
                             n0, offs_t, offs_d, stride_kn, stride_kd, stride_mm, stride_mn, Nq, Nk,
                             D, scale, am1, m, t, IS_CAUSAL, MASK_KIND, MASK_TMA, PRECISION, BOUNDS,
                             KEY_TMA)
    c0, c1, c2, c3 = threshold_terms(x, ALPHA_MODE, k)
    return _fold(c0, c1, c2, c3)


@triton.jit
def adasplash_attention_threshold(
    Q, K, KDesc, Mask, MDesc, HeadAlpha, RowMax, TileMax, RowTable, RowRef, List, Count, Tau, Stats,
    Entries,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_mb, stride_mh, stride_mm, stride_mn,
    Hq, G, Nq, Nk, D, n_tiles_m, n_tiles_n, BH0, scale, alpha,
    IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, MASK_TMA: tl.constexpr,
    ALPHA_MODE: tl.constexpr,
    HEAD_ALPHA: tl.constexpr, PRECISION: tl.constexpr, HISTOGRAM: tl.constexpr,
    KEY_TMA: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr, MAX_STEPS: tl.constexpr, LIST_CHUNK: tl.constexpr,
    STATS: tl.constexpr, LISTING: tl.constexpr, RESOLVE_STEPS: tl.constexpr,
    START_CHUNK: tl.constexpr,
):
    """tau per row: threshold passes, each over the tiles that can hold some z > t. First the
    candidates, the tiles with some z > -1 (all that any t >= -1 needs), go to the first half of
    the program's List and their count to Count; the slice table gets their bounds, and -inf
    for the others (TileMax, written here only).
    KEY_TMA: key tiles through KDesc, a descriptor of K in (1, 1, 64, BLOCK_D) boxes; MASK_TMA:
    mask tiles through MDesc (``mask_tile``)."""
    R: tl.constexpr = BLOCK_M // 64
    scale = tl.cast(scale, tl.float32)  # callers may pass float64 scalars (Inductor does)
    # Pointers, indices and whatever picks list positions (alpha, the row statistics) are
    # computed here, not returned by helpers: Inductor's analysis of which tensors a kernel writes
    # ties a helper's results to all of its pointer arguments.
    pid_m, bh, b, h, hk, n_kt = _program_coords(Hq, G, Nq, Nk, BH0, BLOCK_M, IS_CAUSAL)
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
    # the row table and the lists hold this launch's heads only: candidates, then a pass's tiles
    rt_base = RowTable + tl.program_id(1).to(tl.int64) * n_tiles_n * Nq
    block = tl.program_id(1).to(tl.int64) * tl.num_programs(0) + pid_m
    Cand = List + block * 2 * n_tiles_n
    List = Cand + n_tiles_n
    # the listing pass's lists (``listing.py``), and before them the table start's scratch
    entries = Entries + block * (BLOCK_M * 8 * LIST_STRIDE)
    rows = bh.to(tl.int64) * Nq + offs_m
    m = tl.load(RowMax + rows, mask=offs_m < Nq, other=float("-inf"))
    # shift = (alpha - 1)(m - r) turns the row table's entries into bounds of z (0 on rows with
    # no admissible key, where m = -inf)
    ref = tl.load(RowRef + tl.program_id(1).to(tl.int64) * Nq + offs_m, mask=offs_m < Nq,
                  other=float("-inf"))
    shift = tl.where(m == float("-inf"), 0.0, am1 * (m - ref))
    offs_d = tl.arange(0, BLOCK_D)
    offs_t = tl.arange(0, 64)
    k_base = b.to(tl.int64) * stride_kb + hk * stride_kh
    mask_base = b.to(tl.int64) * stride_mb + h * stride_mh
    mb, mh = _mask_coords(b, h, stride_mb, stride_mh)
    empty = m == float("-inf")
    m = tl.where(empty, 0.0, m)
    n_free = _interior_tiles(pid_m, Nq, Nk, BLOCK_M, IS_CAUSAL)
    # the candidates: the tiles whose row table says that they may hold some z > -1 (every z of
    # the others lies below -1); the slice table gets their bounds, and -inf for the others
    n_cand, n_cand_int, unseen_cand = _live_list(
        rt_base, offs_m, Nq, shift, None, n_kt, Cand, n_free, tl.where(empty, float("inf"), -1.0),
        tm_ptrs, slice_ok, am1, 2, ROW_CHUNK)
    for c in range(n_kt, n_tiles_n, LIST_CHUNK):  # (and -inf on the tiles no query here sees)
        kt = c + tl.arange(0, LIST_CHUNK)
        tl.store(tm_ptrs[:, None] + kt[None, :], float("-inf"),
                 mask=slice_ok[:, None] & (kt < n_tiles_n)[None, :])
    tl.store(Count + block, n_cand)
    tl.debug_barrier()
    n_cand = tl.load(Count + block)  # (read back: the stores below depend on it, see _live_list)

    # start at the sweep's histogram start, at the row table's or at -1 (the max alone gives p = 1
    # there; f(-1) >= 0 >= f(0) brackets tau); all are inf for empty rows. From -1 the first
    # pass visits the candidates as listed (``whole``: its own list would be the same). (Also
    # from the row table's start where 3/4 of the key tiles or more are candidates: on an H200
    # at N = 16k the threshold kernel took 3.37 -> 3.29 ms at block sparsity 0, but 2.16 -> 2.39
    # at 0.49, whose tiles above -1 lie mostly below that start.)
    whole = False
    if HISTOGRAM:
        t = tl.load(Tau + rows, mask=offs_m < Nq, other=float("inf"))
    else:
        t = tl.where(empty, float("inf"), -1.0)
        if (n_cand >= TABLE_START_TILES) & (4 * n_cand >= n_kt):
            steps = tl.where(4 * n_cand >= 3 * n_kt, TABLE_STEPS, 1)
            # (listing: a start at or below tau; the lists' scratch is free until the listing)
            t = _table_start(rt_base, pid_m * BLOCK_M, Nq, shift, Cand, n_cand, empty, k,
                             entries, BLOCK_M, ALPHA_MODE, steps, START_CHUNK)
        else:
            whole = True
        # read back: the lists' positions depend on t, and a helper's result counts for
        # Inductor's analysis of what the kernel writes as derived from all of its pointer
        # arguments (the row table, read by _table_start, would count as written)
        tl.store(Tau + rows, t, mask=offs_m < Nq)
        tl.debug_barrier()
        t = tl.load(Tau + rows, mask=offs_m < Nq, other=float("inf"))
    lo = tl.where(empty, float("inf"), -1.0)
    hi = tl.where(empty, float("inf"), 0.0)
    prev = tl.full([BLOCK_M], -1.0, tl.float32)
    done = empty
    step = 0
    if LISTING:
        # the first pass lists every z > t (``listing.py``); rows whose lists hold them all
        # take tau from their lists, the others go on from t
        if whole:  # (from t = -1: the candidates as listed)
            n_live, n_int = n_cand, n_cand_int
        else:
            n_live, n_int, unseen = _live_list(rt_base, offs_m, Nq, shift, Cand, n_cand, List,
                                               n_free, t, None, None, am1, 0, ROW_CHUNK)
        tiles = Cand + tl.where(whole, 0, n_tiles_n)
        n_list = tl.zeros([BLOCK_M, 8], tl.int32)
        for edge in tl.static_range(2):
            for j in range(n_int if edge else 0, n_live if edge else n_int):
                x = _tile_shifted_scores(
                    q, K, KDesc, Mask, MDesc, k_base, b, hk, mask_base, mb, mh, pid_m * BLOCK_M,
                    offs_m, tl.load(tiles + j) * 64, offs_t, offs_d, stride_kn,
                    stride_kd, stride_mm, stride_mn, Nq, Nk, D, scale, am1, m, t, IS_CAUSAL,
                    MASK_KIND, MASK_TMA, PRECISION, edge == 1, KEY_TMA)
                n_list = list_entries(entries, x, n_list)
        tl.debug_barrier()
        t, done = resolve_lists(entries, n_list, t, k, ALPHA_MODE, RESOLVE_STEPS)
        # read back (see the start above), done in the first slot of each row's lists
        flags = entries + tl.arange(0, BLOCK_M) * (8 * LIST_STRIDE)
        tl.debug_barrier()
        tl.store(Tau + rows, t, mask=offs_m < Nq)
        tl.store(flags, (done | empty).to(tl.float32))
        tl.debug_barrier()
        t = tl.load(Tau + rows, mask=offs_m < Nq, other=float("inf"))
        done = tl.load(flags) != 0
        whole = False
        step = 1
    while (step < MAX_STEPS) & (tl.min(done.to(tl.int32), 0) == 0):
        # converged rows keep their t and no longer need their tiles
        first = (step == 0) & whole
        if first:
            n_live, n_int, unseen = n_cand, n_cand_int, unseen_cand
        else:
            n_live, n_int, unseen = _live_list(rt_base, offs_m, Nq, shift, Cand, n_cand, List,
                                               n_free, tl.where(done, float("inf"), t), None, None,
                                               am1, 0, ROW_CHUNK)
            unseen = tl.maximum(unseen, unseen_cand)
        tiles = Cand + tl.where(first, 0, n_tiles_n)  # (List = Cand + n_tiles_n)
        count = tl.zeros([BLOCK_M, 8], tl.float32)
        s1 = tl.zeros([BLOCK_M, 8], tl.float32)
        s2 = tl.zeros([BLOCK_M, 8], tl.float32)
        gap = tl.full([BLOCK_M, 8], float("inf"), tl.float32)
        for edge in tl.static_range(2):  # the interior tiles, then the edge ones with checks
            for j in range(n_int if edge else 0, n_live if edge else n_int):
                c0, c1, c2, c3 = _tile_threshold_stats(
                    q, K, KDesc, Mask, MDesc, k_base, b, hk, mask_base, mb, mh, pid_m * BLOCK_M,
                    offs_m, tl.load(tiles + j) * 64, offs_t, offs_d, stride_kn, stride_kd,
                    stride_mm, stride_mn, Nq, Nk, D, scale, am1, m, t, k, IS_CAUSAL, MASK_KIND,
                    MASK_TMA, PRECISION, ALPHA_MODE, edge == 1, KEY_TMA)
                count += c0
                s1 += c1
                s2 += c2
                gap = tl.minimum(gap, c3)
        # every z the pass left out lies below unseen, so t may move down to there only
        gap = tl.minimum(tl.min(gap, 1), t - unseen)
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
def _tile_output(acc, acc_u, q, K, KDesc, V, VDesc, Mask, MDesc, k_base, v_base, b, hk, mask_base,
                 mb, mh, m0, offs_m, n0, offs_t, offs_d, offs_dv, stride_kn, stride_kd, stride_vn,
                 stride_vd, stride_mm, stride_mn, Nq, Nk, D, DV, scale, am1, m, t, k,
                 IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, MASK_TMA: tl.constexpr,
                 PRECISION: tl.constexpr,
                 ALPHA_MODE: tl.constexpr, BOUNDS: tl.constexpr, U_SHIFT: tl.constexpr,
                 KEY_TMA: tl.constexpr, VALUE_TMA: tl.constexpr):
    """The key tile from n0 into acc += p v (and, if U_SHIFT, acc_u += u v); returns acc, acc_u,
    p, u (u in v's dtype if U_SHIFT)."""
    x = _tile_shifted_scores(q, K, KDesc, Mask, MDesc, k_base, b, hk, mask_base, mb, mh, m0, offs_m,
                             n0, offs_t, offs_d, stride_kn, stride_kd, stride_mm, stride_mn, Nq, Nk,
                             D, scale, am1, m, t, IS_CAUSAL, MASK_KIND, MASK_TMA, PRECISION, BOUNDS,
                             KEY_TMA)
    p, u = p_and_u(x, k, ALPHA_MODE)
    v = value_tile(V, VDesc, v_base, b, hk, n0, n0 + offs_t, offs_dv, stride_vn, stride_vd, Nk, DV,
                   VALUE_TMA)
    acc += tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    if U_SHIFT:
        # u as the product sees it (rounded to v's dtype), so that the normalisation by its sum
        # keeps u_mean an exact average: a part common to the values cancels in u_mean - out
        u = u.to(v.dtype)
        acc_u += tl.dot(u, v, input_precision=PRECISION)
    return acc, acc_u, p, u


@triton.jit
def adasplash_attention_out(
    Q, K, KDesc, V, VDesc, Mask, MDesc, HeadAlpha, RowMax, TileMax, RowTable, RowRef, List, Count,
    Tau, Out, UShift, Stats,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_mb, stride_mh, stride_mm, stride_mn,
    Hq, G, Nq, Nk, D, DV, n_tiles_m, n_tiles_n, BH0, scale, alpha,
    IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, MASK_TMA: tl.constexpr,
    ALPHA_MODE: tl.constexpr,
    HEAD_ALPHA: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, LIST_CHUNK: tl.constexpr,
    STATS: tl.constexpr, U_SHIFT: tl.constexpr, KEY_TMA: tl.constexpr, VALUE_TMA: tl.constexpr,
):
    """out = sum_j p_j v_j / sum_j p_j over the tiles live for tau and, if U_SHIFT, the backward's
    u_shift = sum_j u_j v_j / sum_j u_j - out, u = p^(2 - alpha). (A kernel of its own: the list
    it builds then depends on loaded values only, which keeps Inductor's analysis of what the
    kernels write exact.) KEY_TMA, VALUE_TMA: key and value tiles through KDesc and VDesc,
    descriptors in (1, 1, 64, BLOCK_D) and (1, 1, 64, BLOCK_DV) boxes; MASK_TMA: mask tiles
    through MDesc (``mask_tile``)."""
    R: tl.constexpr = BLOCK_M // 64
    scale = tl.cast(scale, tl.float32)
    # Pointers, indices and whatever picks list positions (alpha, the row statistics) are
    # computed here, not returned by helpers: Inductor's analysis of which tensors a kernel writes
    # ties a helper's results to all of its pointer arguments.
    pid_m, bh, b, h, hk, n_kt = _program_coords(Hq, G, Nq, Nk, BH0, BLOCK_M, IS_CAUSAL)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    if HEAD_ALPHA:
        am1 = tl.load(HeadAlpha + h).to(tl.float32) - 1.0
    else:
        am1 = tl.cast(alpha, tl.float32) - 1.0
    k = 1.0 / am1
    slices = pid_m * R + tl.arange(0, R)
    slice_ok = slices < n_tiles_m
    tm_ptrs = TileMax + (bh.to(tl.int64) * n_tiles_m + slices) * n_tiles_n
    # the row table and the lists hold this launch's heads only: candidates (from the threshold
    # kernel), then this pass's tiles
    rt_base = RowTable + tl.program_id(1).to(tl.int64) * n_tiles_n * Nq
    block = tl.program_id(1).to(tl.int64) * tl.num_programs(0) + pid_m
    Cand = List + block * 2 * n_tiles_n
    List = Cand + n_tiles_n
    rows = bh.to(tl.int64) * Nq + offs_m
    m = tl.load(RowMax + rows, mask=offs_m < Nq, other=float("-inf"))
    # shift = (alpha - 1)(m - r) turns the row table's entries into bounds of z (0 on rows with
    # no admissible key, where m = -inf)
    ref = tl.load(RowRef + tl.program_id(1).to(tl.int64) * Nq + offs_m, mask=offs_m < Nq,
                  other=float("-inf"))
    shift = tl.where(m == float("-inf"), 0.0, am1 * (m - ref))
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    offs_t = tl.arange(0, 64)
    k_base = b.to(tl.int64) * stride_kb + hk * stride_kh
    v_base = b.to(tl.int64) * stride_vb + hk * stride_vh
    mask_base = b.to(tl.int64) * stride_mb + h * stride_mh
    mb, mh = _mask_coords(b, h, stride_mb, stride_mh)
    m = tl.where(m == float("-inf"), 0.0, m)
    t = tl.load(Tau + rows, mask=offs_m < Nq, other=float("inf"))

    n_free = _interior_tiles(pid_m, Nq, Nk, BLOCK_M, IS_CAUSAL)
    # the tiles left out, on which no row has p > 0, get -inf in the slice table (for the backward)
    n_live, n_int, _ = _live_list(rt_base, offs_m, Nq, shift, Cand, tl.load(Count + block), List,
                                  n_free, t, tm_ptrs, slice_ok, am1, 1, ROW_CHUNK)
    q = load_tile(Q + b.to(tl.int64) * stride_qb + h * stride_qh, offs_m, offs_d, stride_qm,
                  stride_qd, Nq, D)
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
                acc, acc_u, q, K, KDesc, V, VDesc, Mask, MDesc, k_base, v_base, b, hk, mask_base, mb,
                mh, pid_m * BLOCK_M, offs_m, tl.load(List + j) * 64, offs_t, offs_d, offs_dv,
                stride_kn, stride_kd, stride_vn, stride_vd, stride_mm, stride_mn, Nq, Nk, D, DV,
                scale, am1, m, t, k, IS_CAUSAL, MASK_KIND, MASK_TMA, PRECISION, ALPHA_MODE,
                edge == 1, U_SHIFT, KEY_TMA, VALUE_TMA)
            p_sum = tl.sum(p, 1)
            l += p_sum
            if U_SHIFT:
                l_u += tl.sum(u.to(tl.float32), 1)
            if STATS:
                support += tl.sum((p > 0).to(tl.float32), 1)
            # p >= 0, so its row sum tells whether some p > 0 (the row max cost 10% of the
            # loop's instructions; output kernel 2.34 -> 2.27-2.30 ms on an H100 at N = 16k)
            held |= tl.where(p_sum > 0, 1 << (j % 32), 0)
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


def _descriptor_class():
    """Triton's host-side TensorDescriptor, or None where this Triton has none."""
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor
    except ImportError:
        return None
    return TensorDescriptor


def _before_hopper(x: torch.Tensor) -> bool:
    """Whether x lives on a card without Hopper's tensor memory accelerator."""
    return x.device.type == "cuda" and torch.cuda.get_device_capability(x.device)[0] < 9


def tile_descriptor(x: torch.Tensor, block_rows: int, block_cols: int):
    """A host-side TMA descriptor of x (B, Hkv, N, C), keys or values, in (1, 1, block_rows,
    block_cols) boxes for a launch of its own (eager: x holds data), or None where this Triton has
    none, the card predates Hopper's tensor memory accelerator, or the hardware cannot take x as
    laid out: the last dim not contiguous, another stride zero (expanded) or not a multiple of 16
    bytes, or the start not 16-byte aligned (such views of projections exist)."""
    descriptor = _descriptor_class()
    item = x.element_size()
    if (descriptor is None or _before_hopper(x) or x.stride(-1) != 1 or x.data_ptr() % 16
            or any(s <= 0 or s * item % 16 for s in x.stride()[:-1])):
        return None
    return descriptor.from_tensor(x, [1, 1, block_rows, block_cols])


def mask_descriptor(mask: torch.Tensor, strides, block_rows: int, block_cols: int):
    """(descriptor, MASK_TMA) of a 4-D mask (``mask_4d``; a bool mask read as uint8) in (1, 1,
    block_rows, block_cols) boxes, or (1, 1, 1, block_cols) of its one query row where the queries
    broadcast (MASK_TMA 2, else 1); dims with stride 0 count as one (their coordinate is 0). (None,
    0) where pointers must do: no descriptors in this Triton or before Hopper, the keys not
    contiguous, or a stride or the start not 16-byte aligned."""
    descriptor = _descriptor_class()
    base = mask.view(torch.uint8) if mask.dtype == torch.bool else mask
    item = base.element_size()
    if (descriptor is None or _before_hopper(mask) or strides[3] != 1 or base.data_ptr() % 16
            or any(s * item % 16 for s in strides[:3])):
        return None, 0
    shape = [base.shape[i] if strides[i] else 1 for i in range(3)] + [base.shape[3]]
    rows = block_rows if strides[2] else 1
    # a dim of one takes any aligned stride
    dims = [s if s else 16 // item for s in strides[:3]] + [1]
    return descriptor(base, shape, dims, [1, 1, rows, block_cols]), 2 if rows == 1 else 1


def dot_precision(dtype: torch.dtype) -> str:
    """IEEE dots for float32 inputs (tf32 would cost ~1e-3); tensor cores for 16-bit ones."""
    return "ieee" if dtype == torch.float32 else "tf32"


def attention_forward(q, k, v, attn_mask, is_causal, scale, alpha, head_alpha=None,
                      for_backward=False, launch=_identity, stats=False, direct_launch=True):
    """(out, tau, row_max, tile_max, u_shift) as ``lowering.reference.attention_forward`` (no
    dropout); u_shift has 0 elements unless for_backward. direct_launch: Triton's own launcher
    runs the launches (eager calls), not Inductor's: only then does the threshold kernel get
    THRESHOLD_REGISTERS (``maxnreg``) where that pays, and the kernels their key and value
    tiles through descriptors where k and v allow (``tile_descriptor``; torch keeps no descriptor
    in a graph it traces outside dynamo).

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
    tile_max = torch.empty((B, Hq, n_tm, n_tn), **f32)  # (every entry from the threshold kernel)
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
    narrow = q.dtype == torch.float32 or mask_kind != 0  # fewer key tiles per sweep step
    sparse = dict(BLOCK_M=sparse_m, LIST_CHUNK=LIST_CHUNK, STATS=stats, **common,
                  num_warps=8 if sparse_m == 128 else 4, num_stages=1 if wide else 2)
    capped = direct_launch and not (wide or narrow) and mode != 0  # (else it spills, see above)
    cap = dict(maxnreg=THRESHOLD_REGISTERS) if capped else {}
    # the row table and the live lists are scratch, for a group of heads at a time: groups of
    # (first head, heads); with one group no size needs to be an integer (under torch.compile
    # they may be symbolic)
    # the first threshold pass lists each row's entries above its start (``listing.py``) for the
    # alphas with closed-form steps: LIST_STRIDE float32 entries per row and column class
    listing = not histogram
    list_bytes = n_mb * sparse_m * 8 * LIST_STRIDE.value * 4 if listing else 0
    if B * Hq * (Nq * n_tn + list_bytes) <= ROW_TABLE_BYTES:
        heads, groups = B * Hq, [(0, B * Hq)]
    else:
        heads = max(1, ROW_TABLE_BYTES // (Nq * n_tn + list_bytes))
        groups = [(bh0, min(heads, B * Hq - bh0)) for bh0 in range(0, B * Hq, heads)]
    entries = torch.empty((heads * list_bytes // 4 if listing else 1,), **f32)
    row_table = torch.empty((heads, n_tn, Nq), dtype=torch.int8, device=q.device)
    row_ref = torch.empty((heads, Nq), **f32)
    live_list = torch.empty((heads * n_mb * 2 * n_tn,), dtype=torch.int32, device=q.device)
    n_cand = torch.empty((heads * n_mb,), dtype=torch.int32, device=q.device)
    short = Nk <= SHORT_SWEEP_KEYS
    sweep_tiles = 1 if wide else DENSE_KEY_TILES_NARROW if narrow or short else DENSE_KEY_TILES
    # the passes of 16-bit inputs load their key and value tiles, and the sweep of 16-bit inputs
    # without a mask its key blocks, through descriptors where k and v allow (KEY_TMA,
    # VALUE_TMA; PASS_TMA_DTYPES)
    pass_tma = direct_launch and q.dtype in PASS_TMA_DTYPES
    k_tiles = tile_descriptor(k, TILE, block_d) if pass_tma else None
    v_tiles = tile_descriptor(v, TILE, block_dv) if pass_tma else None
    k_desc = (tile_descriptor(k, 64 * sweep_tiles, block_d)
              if k_tiles is not None and not (wide or narrow) else None)
    threshold_options = (dict(sparse, num_stages=THRESHOLD_TMA_STAGES)
                         if k_tiles is not None and not wide else sparse)
    # mask blocks and tiles through descriptors where the mask allows (eager calls)
    no_desc = (None, 0)
    m_blocks, sweep_mask_tma = (mask_descriptor(mask, ms, dense_m, 64 * sweep_tiles)
                                if direct_launch and mask_kind else no_desc)
    m_tiles, pass_mask_tma = (mask_descriptor(mask, ms, TILE, TILE)
                              if direct_launch and mask_kind else no_desc)
    for bh0, group in groups:
        launch(adasplash_attention_max)[(triton.cdiv(Nq, dense_m), group)](
            q, k, k if k_desc is None else k_desc, mask, mask if m_blocks is None else m_blocks,
            ha, row_max, row_table, row_ref, tau, *q.stride(), *k.stride(), *ms,
            Hq, Hq // Hkv, Nq, Nk, D, n_tn, bh0, scale, float(alpha), BLOCK_M=dense_m,
            T=sweep_tiles, HISTOGRAM=histogram, KEY_TMA=k_desc is not None,
            MAX_THEN_SCALE=scale > 0 and mask_kind != 2 and not histogram,
            MASK_TMA=sweep_mask_tma, **common,
            num_warps=8 if dense_m == 128 else 4,
            num_stages=1 if wide else 2 if narrow or short else 3,
        )
        launch(adasplash_attention_threshold)[(n_mb, group)](
            q, k, k if k_tiles is None else k_tiles, mask, mask if m_tiles is None else m_tiles,
            ha, row_max, tile_max, row_table, row_ref, live_list, n_cand, tau, stat_buf, entries,
            *q.stride(), *k.stride(), *ms, Hq, Hq // Hkv, Nq, Nk, D, n_tm, n_tn, bh0, scale,
            float(alpha), MAX_STEPS=MAX_STEPS, HISTOGRAM=histogram, LISTING=listing,
            RESOLVE_STEPS=RESOLVE_STEPS, START_CHUNK=START_CHUNK, KEY_TMA=k_tiles is not None,
            MASK_TMA=pass_mask_tma, **threshold_options, **cap,
        )
        launch(adasplash_attention_out)[(n_mb, group)](
            q, k, k if k_tiles is None else k_tiles, v, v if v_tiles is None else v_tiles, mask,
            mask if m_tiles is None else m_tiles, ha, row_max, tile_max, row_table, row_ref,
            live_list, n_cand, tau, out,
            u_shift if for_backward else out, stat_buf,
            *q.stride(), *k.stride(), *v.stride(), *ms,
            Hq, Hq // Hkv, Nq, Nk, D, DV, n_tm, n_tn, bh0, scale, float(alpha), BLOCK_DV=block_dv,
            U_SHIFT=bool(for_backward), KEY_TMA=k_tiles is not None,
            VALUE_TMA=v_tiles is not None, MASK_TMA=pass_mask_tma, **sparse,
        )
    return (out, tau, row_max, tile_max, u_shift) + ((stat_buf,) if stats else ())
