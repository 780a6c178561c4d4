"""Block-sparse alpha-entmax attention backward: deterministic dq, dk, dv and per-row dalpha.

With s the masked scores, d = [(alpha - 1)(s - m) - tau]_+ (m, tau saved by the forward),
p = d^k (k = 1 / (alpha - 1)), u = p^(2 - alpha) = d^(k - 1) on the support and dP = dO v^T:

    delta_i = sum_j u_ij dP_ij / sum_j u_ij,   dS = u (dP - delta)   (the gradient w.r.t. s),
    dq = scale dS k,   dk = scale dS^T q,   dv = p^T dO,
    dalpha_i = (sum_j dP p - delta) / (alpha-1)^2 - (sum_j dP p log p - delta H) / (alpha-1),
    H = sum_j p log p  (summed over rows and batch into the per-head gradient).

Only the (query block, key tile) pairs that the forward's tile table marks live are visited:
``live_lists`` lists them per query block and per key tile in two small kernels (``live_blocks``
states the same rule in torch). ``adasplash_attention_bwd_dq`` (one program per query block)
reads delta = sum_j u_ij dO_i v_j / sum_j u_ij = rowsum(dO (out + u_shift)) off the forward's
out and u_shift, or makes a first pass over the tiles for it (and for dalpha), then one for dq,
whose interior key tiles skip the range and causal checks; ``adasplash_attention_bwd_dkdv``
(one program per key tile and query head) accumulates dk, dv.
Every output element is written by one program: the results are bitwise reproducible. With
grouped-query attention, dk and dv are written per query head and summed over each group.
"""

import math

import torch
import triton
import triton.language as tl

from .attention_fwd import LIST_CHUNK, TILE, _append, _interior_tiles, dot_precision, mask_4d
from .entmax_rows import alpha_mode
from .threshold import p_and_u
from .tiles import load_tile, pointer_mask_tile, shift_scores, shifted_scores


@triton.jit
def _slice_list(tm_ptrs, slice_ok, List, n_kt, thr, CHUNK: tl.constexpr):
    """Write to List, in ascending order, the first n_kt key tiles whose slice-table entry reaches
    thr for one of the 64-row slices; return how many."""
    n_live = tl.full([], 0, tl.int32)
    for c in range(0, n_kt, CHUNK):
        kt = c + tl.arange(0, CHUNK)
        tmax = tl.load(tm_ptrs[:, None] + kt[None, :],
                       mask=slice_ok[:, None] & (kt < n_kt)[None, :], other=float("-inf"))
        n_live = _append(List, n_live, (tl.max((tmax >= thr[:, None]).to(tl.int32), 0) > 0)
                         & (kt < n_kt), kt)
    tl.debug_barrier()
    return n_live


@triton.jit
def _row_stats(RowMax, Tau, rows, valid):
    """(m, tau) of the rows, with m = 0 and tau = +inf on rows with no admissible key."""
    m = tl.load(RowMax + rows, mask=valid, other=float("-inf"))
    t = tl.load(Tau + rows, mask=valid, other=float("inf"))
    empty = m == float("-inf")
    return tl.where(empty, 0.0, m), tl.where(empty, float("inf"), t)


@triton.jit
def _count_below(List, n, bound, CHUNK: tl.constexpr):
    """How many of List[:n] are below bound (an ascending list: they come first)."""
    count = tl.full([], 0, tl.int32)
    for c in range(0, n, CHUNK):
        i = c + tl.arange(0, CHUNK)
        count += tl.sum((tl.load(List + i, mask=i < n, other=bound) < bound).to(tl.int32), 0)
    return count


@triton.jit
def _alpha_minus_one(HeadAlpha, h, alpha, HEAD_ALPHA: tl.constexpr):
    if HEAD_ALPHA:
        return tl.load(HeadAlpha + h).to(tl.float32) - 1.0
    else:
        return alpha - 1.0


@triton.jit
def adasplash_attention_bwd_dq(
    Q, K, V, DO, Out, UShift, Mask, HeadAlpha, RowMax, Tau, KList, KCount, DQ, Delta, DAlphaRow,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_mb, stride_mh, stride_mm, stride_mn,
    Hq, G, Nq, Nk, D, DV, n_blocks_n, scale, alpha,
    IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, ALPHA_MODE: tl.constexpr,
    HEAD_ALPHA: tl.constexpr, PRECISION: tl.constexpr, NEED_DALPHA: tl.constexpr,
    DELTA_FROM_U: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    LIST_CHUNK: tl.constexpr,
):
    scale = tl.cast(scale, tl.float32)  # callers may pass float64 scalars (Inductor does)
    alpha = tl.cast(alpha, tl.float32)
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    k_base = b.to(tl.int64) * stride_kb + (h // G) * stride_kh
    v_base = b.to(tl.int64) * stride_vb + (h // G) * stride_vh
    mask_base = b.to(tl.int64) * stride_mb + h * stride_mh
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    offs_b = tl.arange(0, BLOCK_N)
    rows = bh.to(tl.int64) * Nq + offs_m
    q = load_tile(Q + b.to(tl.int64) * stride_qb + h * stride_qh, offs_m, offs_d, stride_qm,
                  stride_qd, Nq, D)
    do = load_tile(DO + b.to(tl.int64) * stride_ob + h * stride_oh, offs_m, offs_dv, stride_om,
                   stride_od, Nq, DV)
    m, t = _row_stats(RowMax, Tau, rows, offs_m < Nq)
    am1 = _alpha_minus_one(HeadAlpha, h, alpha, HEAD_ALPHA)
    k = 1.0 / am1
    block = bh.to(tl.int64) * tl.num_programs(0) + pid_m
    n_live = tl.load(KCount + block)
    KList += block * n_blocks_n

    if DELTA_FROM_U:
        # delta = sum u dO v / sum u = rowsum(dO (out + u_shift)): no pass over the tiles
        # (out and u_shift are contiguous (B, Hq, Nq, DV))
        o_base = bh.to(tl.int64) * Nq * DV
        out = load_tile(Out + o_base, offs_m, offs_dv, DV, 1, Nq, DV).to(tl.float32)
        u_shift = load_tile(UShift + o_base, offs_m, offs_dv, DV, 1, Nq, DV).to(tl.float32)
        delta = tl.sum(do.to(tl.float32) * (out + u_shift), 1)
    else:
        delta = _delta_pass(q, do, K, V, Mask, KList, n_live, k_base, v_base, mask_base, offs_m,
                            offs_b, offs_d, offs_dv, stride_kn, stride_kd, stride_vn, stride_vd,
                            stride_mm, stride_mn, Nq, Nk, D, DV, scale, am1, m, t, k, DAlphaRow,
                            rows, IS_CAUSAL, MASK_KIND, ALPHA_MODE, PRECISION, NEED_DALPHA,
                            BLOCK_M, BLOCK_N)
    tl.store(Delta + rows, delta, mask=offs_m < Nq)

    # dq = scale dS k (one load of the key tile serves both products); the interior key tiles
    # (no range or causal check, ``_interior_tiles``) come first in the ascending list
    n_int = _count_below(KList, n_live, _interior_tiles(pid_m, Nq, Nk, BLOCK_M, IS_CAUSAL),
                         LIST_CHUNK)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for edge in tl.static_range(2):
        for j in range(n_int if edge else 0, n_live if edge else n_int):
            offs_n = tl.load(KList + j) * BLOCK_N + offs_b
            kb = load_tile(K + k_base, offs_n, offs_d, stride_kn, stride_kd, Nk, D)
            mt = pointer_mask_tile(Mask, mask_base, offs_m, offs_n, stride_mm, stride_mn, Nq, Nk,
                                   MASK_KIND)
            x = shift_scores(tl.dot(q, tl.trans(kb), input_precision=PRECISION), mt, offs_m,
                             offs_n, Nq, Nk, scale, am1, m, t, IS_CAUSAL, MASK_KIND, edge == 1)
            p, u = p_and_u(x, k, ALPHA_MODE)
            vt = load_tile(V + v_base, offs_dv, offs_n, stride_vd, stride_vn, DV, Nk)
            ds = u * (tl.dot(do, vt, input_precision=PRECISION) - delta[:, None])
            dq += tl.dot(ds.to(kb.dtype), kb, input_precision=PRECISION)
    tl.store(DQ + rows[:, None] * D + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=(offs_m[:, None] < Nq) & (offs_d[None, :] < D))


@triton.jit
def _delta_pass(q, do, K, V, Mask, KList, n_live, k_base, v_base, mask_base, offs_m, offs_b,
                offs_d, offs_dv, stride_kn, stride_kd, stride_vn, stride_vd, stride_mm, stride_mn,
                Nq, Nk, D, DV, scale, am1, m, t, k, DAlphaRow, rows, IS_CAUSAL: tl.constexpr,
                MASK_KIND: tl.constexpr, ALPHA_MODE: tl.constexpr, PRECISION: tl.constexpr,
                NEED_DALPHA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """delta = sum u dP / sum u by a pass over the live key tiles; if NEED_DALPHA, also the
    per-row dalpha (stored to DAlphaRow)."""
    su = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    sudp = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    spdp = tl.zeros([BLOCK_M], tl.float32)
    splogpdp = tl.zeros([BLOCK_M], tl.float32)
    ent = tl.zeros([BLOCK_M], tl.float32)
    for j in range(0, n_live):
        offs_n = tl.load(KList + j) * BLOCK_N + offs_b
        kt = load_tile(K + k_base, offs_d, offs_n, stride_kd, stride_kn, D, Nk)
        mt = pointer_mask_tile(Mask, mask_base, offs_m, offs_n, stride_mm, stride_mn, Nq, Nk,
                               MASK_KIND)
        x = shifted_scores(q, kt, mt, offs_m, offs_n, Nq, Nk, scale, am1, m, t, IS_CAUSAL,
                           MASK_KIND, PRECISION, True)
        p, u = p_and_u(x, k, ALPHA_MODE)
        vt = load_tile(V + v_base, offs_dv, offs_n, stride_vd, stride_vn, DV, Nk)
        dp = tl.dot(do, vt, input_precision=PRECISION)
        su += u
        sudp += u * dp
        if NEED_DALPHA:
            plogp = tl.where(p > 0, p * tl.log(tl.maximum(p, 1e-30)), 0.0)
            spdp += tl.sum(p * dp, 1)
            splogpdp += tl.sum(plogp * dp, 1)
            ent += tl.sum(plogp, 1)
    su = tl.sum(su, 1)
    sudp = tl.sum(sudp, 1)
    delta = sudp / tl.where(su > 0, su, 1.0)
    if NEED_DALPHA:
        da = (spdp - delta) / (am1 * am1) - (splogpdp - delta * ent) / am1
        tl.store(DAlphaRow + rows, da, mask=offs_m < Nq)
    return delta


@triton.jit
def adasplash_attention_bwd_dkdv(
    Q, K, V, DO, Mask, HeadAlpha, RowMax, Tau, Delta, QList, QCount, DK, DVout,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_mb, stride_mh, stride_mm, stride_mn,
    Hq, G, Nq, Nk, D, DV, n_blocks_m, scale, alpha,
    IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, ALPHA_MODE: tl.constexpr,
    HEAD_ALPHA: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    scale = tl.cast(scale, tl.float32)
    alpha = tl.cast(alpha, tl.float32)
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    q_base = b.to(tl.int64) * stride_qb + h * stride_qh
    o_base = b.to(tl.int64) * stride_ob + h * stride_oh
    mask_base = b.to(tl.int64) * stride_mb + h * stride_mh
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    offs_b = tl.arange(0, BLOCK_M)
    kt = load_tile(K + b.to(tl.int64) * stride_kb + (h // G) * stride_kh, offs_d, offs_n,
                   stride_kd, stride_kn, D, Nk)
    vt = load_tile(V + b.to(tl.int64) * stride_vb + (h // G) * stride_vh, offs_dv, offs_n,
                   stride_vd, stride_vn, DV, Nk)
    am1 = _alpha_minus_one(HeadAlpha, h, alpha, HEAD_ALPHA)
    k = 1.0 / am1
    block = bh.to(tl.int64) * tl.num_programs(0) + pid_n
    n_live = tl.load(QCount + block)
    QList += block * n_blocks_m

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    for j in range(0, n_live):
        offs_m = tl.load(QList + j) * BLOCK_M + offs_b
        rows = bh.to(tl.int64) * Nq + offs_m
        q = load_tile(Q + q_base, offs_m, offs_d, stride_qm, stride_qd, Nq, D)
        do = load_tile(DO + o_base, offs_m, offs_dv, stride_om, stride_od, Nq, DV)
        m, t = _row_stats(RowMax, Tau, rows, offs_m < Nq)
        delta = tl.load(Delta + rows, mask=offs_m < Nq, other=0.0)
        mt = pointer_mask_tile(Mask, mask_base, offs_m, offs_n, stride_mm, stride_mn, Nq, Nk,
                               MASK_KIND)
        x = shift_scores(tl.dot(q, kt, input_precision=PRECISION), mt, offs_m, offs_n, Nq, Nk,
                         scale, am1, m, t, IS_CAUSAL, MASK_KIND, True)
        p, u = p_and_u(x, k, ALPHA_MODE)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
        ds = u * (tl.dot(do, vt, input_precision=PRECISION) - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
    cols = bh.to(tl.int64) * Nk + offs_n
    tl.store(DK + cols[:, None] * D + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty),
             mask=(offs_n[:, None] < Nk) & (offs_d[None, :] < D))
    tl.store(DVout + cols[:, None] * DV + offs_dv[None, :], dv.to(DVout.dtype.element_ty),
             mask=(offs_n[:, None] < Nk) & (offs_dv[None, :] < DV))


def live_blocks(tau, tile_max, alpha, head_alpha, block_m: int, block_n: int) -> torch.Tensor:
    """(B, Hq, ceil(Nq/block_m), ceil(Nk/block_n)) bool: can the block hold a nonzero p?

    A TILE x TILE tile can only if its table entry (an upper bound of s - m) reaches the smallest
    tau / (alpha - 1) of its rows; a block is live if one of its tiles is.
    """
    B, Hq, Nq = tau.shape
    n_tm, n_tn = tile_max.shape[-2:]
    am1 = (head_alpha.float().view(1, Hq, 1) - 1.0) if head_alpha is not None else alpha - 1.0
    thr = torch.nn.functional.pad(tau / am1, (0, n_tm * TILE - Nq), value=math.inf)
    live = tile_max >= thr.view(B, Hq, n_tm, TILE).amin(-1, keepdim=True)
    r, c = block_m // TILE, block_n // TILE
    live = torch.nn.functional.pad(live, (0, -n_tn % c, 0, -n_tm % r))
    return live.unflatten(-1, (-1, c)).unflatten(-3, (-1, r)).any(-1).any(-2)


@triton.jit
def adasplash_attention_bwd_key_lists(
    Tau, TileMax, HeadAlpha, Thr, KList, KCount, Hq, Nq, n_tiles_m, n_tiles_n, alpha,
    HEAD_ALPHA: tl.constexpr, BLOCK_M: tl.constexpr, CHUNK: tl.constexpr,
):
    """Per block of BLOCK_M query rows: the key tiles that can hold a nonzero p, ascending, and
    their count (``live_blocks`` with TILE-wide key blocks); also the threshold of each 64-row
    slice, the smallest tau / (alpha - 1) of its rows, into Thr for ``..._query_lists``."""
    R: tl.constexpr = BLOCK_M // 64
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    # alpha is read here, not through a helper: Inductor's analysis of which tensors a kernel
    # writes ties a helper's results to all of its pointer arguments
    if HEAD_ALPHA:
        am1 = tl.load(HeadAlpha + bh % Hq).to(tl.float32) - 1.0
    else:
        am1 = tl.cast(alpha, tl.float32) - 1.0
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    tau = tl.load(Tau + bh.to(tl.int64) * Nq + offs_m, mask=offs_m < Nq, other=float("inf"))
    thr = tl.min(tl.reshape(tau / am1, (R, 64)), 1)
    slices = pid_m * R + tl.arange(0, R)
    slice_ok = slices < n_tiles_m
    tl.store(Thr + bh.to(tl.int64) * n_tiles_m + slices, thr, mask=slice_ok)
    block = bh.to(tl.int64) * tl.num_programs(0) + pid_m
    n_live = _slice_list(TileMax + (bh.to(tl.int64) * n_tiles_m + slices) * n_tiles_n, slice_ok,
                         KList + block * n_tiles_n, n_tiles_n, thr, CHUNK)
    tl.store(KCount + block, n_live)


@triton.jit
def adasplash_attention_bwd_query_lists(Thr, TileMax, QList, QCount, n_tiles_m, n_tiles_n,
                                        CHUNK: tl.constexpr):
    """Per key tile: the 64-row query tiles whose table entry reaches their slice threshold
    (written by ``..._key_lists``), ascending, and their count."""
    kt = tl.program_id(0)
    bh = tl.program_id(1)
    block = bh.to(tl.int64) * n_tiles_n + kt
    n_live = tl.full([], 0, tl.int32)
    for c in range(0, n_tiles_m, CHUNK):
        mt = c + tl.arange(0, CHUNK)
        ok = mt < n_tiles_m
        tmax = tl.load(TileMax + (bh.to(tl.int64) * n_tiles_m + mt) * n_tiles_n + kt, mask=ok,
                       other=float("-inf"))
        thr = tl.load(Thr + bh.to(tl.int64) * n_tiles_m + mt, mask=ok, other=float("inf"))
        n_live = _append(QList + block * n_tiles_m, n_live, (tmax >= thr) & ok, mt)
    tl.store(QCount + block, n_live)


def _identity(kernel):
    return kernel


def live_lists(tau, tile_max, alpha, head_alpha, block_m: int, launch=_identity):
    """The live tiles of ``live_blocks`` as lists, in ascending order: per block of block_m query
    rows its key tiles, (B, Hq, query blocks, key tiles) int32 with the count of each list in a
    (B, Hq, query blocks) tensor; and per key tile its query tiles, (B, Hq, key tiles, query
    tiles) with (B, Hq, key tiles) counts. Entries past a list's count are undefined."""
    B, Hq, Nq = tau.shape
    n_tm, n_tn = tile_max.shape[-2:]
    n_qb = triton.cdiv(Nq, block_m)
    per_head = head_alpha is not None
    i32 = dict(dtype=torch.int32, device=tau.device)
    thr = torch.empty((B, Hq, n_tm), dtype=torch.float32, device=tau.device)
    k_list, k_count = torch.empty((B, Hq, n_qb, n_tn), **i32), torch.empty((B, Hq, n_qb), **i32)
    q_list, q_count = torch.empty((B, Hq, n_tn, n_tm), **i32), torch.empty((B, Hq, n_tn), **i32)
    launch(adasplash_attention_bwd_key_lists)[(n_qb, B * Hq)](
        tau, tile_max, head_alpha if per_head else tau, thr, k_list, k_count, Hq, Nq, n_tm, n_tn,
        float(alpha), HEAD_ALPHA=per_head, BLOCK_M=block_m, CHUNK=LIST_CHUNK,
    )
    launch(adasplash_attention_bwd_query_lists)[(n_tn, B * Hq)](
        thr, tile_max, q_list, q_count, n_tm, n_tn, CHUNK=LIST_CHUNK,
    )
    return k_list, k_count, q_list, q_count


# Query rows per program of the dq kernel (head dims up to 128), which steps over one key tile at
# a time; the dk/dv kernel takes one key tile per program and one query tile per step: the
# fastest of four (rows, keys) pairs each on an H100 (bf16, causal, D = 128) at every sparsity
# measured.
DQ_BLOCK_M = 128


def attention_backward(grad_out, q, k, v, tau, row_max, tile_max, attn_mask, is_causal, scale,
                       alpha, head_alpha=None, need_alpha_grad=False, out=None, u_shift=None,
                       launch=_identity):
    """(dq, dk, dv, dalpha or None) of entmax attention (no dropout, no mask gradient).

    out, u_shift: the forward's (B, Hq, Nq, DV) out and u_shift, or None (or u_shift with 0
    elements): then the dq kernel makes a first pass over the tiles for delta, as it does when
    need_alpha_grad."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk, DV = k.shape[1], k.shape[2], v.shape[-1]
    G = Hq // Hkv
    block_d, block_dv = max(16, triton.next_power_of_2(D)), max(16, triton.next_power_of_2(DV))
    small = max(block_d, block_dv) * q.element_size() > 256  # shared memory: D > 128, or fp32
    bm_q = TILE if small else DQ_BLOCK_M
    mask, ms, mask_kind = mask_4d(attn_mask)
    mask = mask if mask is not None else q
    scale = float(scale if scale is not None else D ** -0.5)
    per_head = head_alpha is not None
    f32 = dict(dtype=torch.float32, device=q.device)
    # the kernels write every element (zeros where no tile is live); nothing runs on empty inputs
    new = torch.empty if B * Hq * Nq * Nk > 0 else torch.zeros
    dq = new((B, Hq, Nq, D), dtype=q.dtype, device=q.device)
    delta = torch.empty((B, Hq, Nq), **f32)
    da_rows = new((B, Hq, Nq), **f32) if need_alpha_grad else delta
    part = torch.float32 if G > 1 else None
    dk = new((B, Hq, Nk, D), dtype=part or k.dtype, device=q.device)
    dv = new((B, Hq, Nk, DV), dtype=part or v.dtype, device=q.device)
    if B * Hq * Nq * Nk > 0:
        do = grad_out
        common = dict(IS_CAUSAL=bool(is_causal), MASK_KIND=mask_kind,
                      ALPHA_MODE=alpha_mode(alpha, per_head), HEAD_ALPHA=per_head,
                      PRECISION=dot_precision(q.dtype), BLOCK_D=block_d, BLOCK_DV=block_dv)
        strides = (*q.stride(), *k.stride(), *v.stride(), *do.stride(), *ms)
        ha = head_alpha if per_head else q
        n_tm, n_tn = tile_max.shape[-2:]
        k_list, k_count, q_list, q_count = live_lists(tau, tile_max, alpha, head_alpha, bm_q,
                                                      launch)
        from_u = u_shift is not None and u_shift.numel() > 0 and not need_alpha_grad
        if from_u and out is None:
            raise ValueError(
                "attention_backward: u_shift is relative to out; pass the forward's out")
        launch(adasplash_attention_bwd_dq)[(k_count.shape[-1], B * Hq)](
            q, k, v, do, out.contiguous() if from_u else q, u_shift.contiguous() if from_u else q,
            mask, ha, row_max, tau, k_list, k_count, dq, delta, da_rows, *strides, Hq, G, Nq, Nk,
            D, DV, n_tn, scale, float(alpha), NEED_DALPHA=need_alpha_grad, DELTA_FROM_U=from_u,
            BLOCK_M=bm_q, BLOCK_N=TILE, LIST_CHUNK=LIST_CHUNK, **common,
            num_warps=8 if bm_q > TILE else 4, num_stages=1 if small else 2,
        )
        launch(adasplash_attention_bwd_dkdv)[(n_tn, B * Hq)](
            q, k, v, do, mask, ha, row_max, tau, delta, q_list, q_count, dk, dv, *strides,
            Hq, G, Nq, Nk, D, DV, n_tm, scale, float(alpha),
            BLOCK_M=TILE, BLOCK_N=TILE, **common, num_warps=4,
            num_stages=1 if small else 2,
        )
    if G > 1:
        dk = dk.view(B, Hkv, G, Nk, D).sum(2).to(k.dtype)
        dv = dv.view(B, Hkv, G, Nk, DV).sum(2).to(v.dtype)
    dalpha = da_rows.sum((0, 2)) if need_alpha_grad else None
    return dq, dk, dv, dalpha
