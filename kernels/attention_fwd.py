"""Block-sparse alpha-entmax attention forward (AdaSplash-2 style), one program per query block.

For a block of BLOCK_M query rows of one head, with s = scale q k^T + mask (-inf where excluded) and
z = (alpha - 1) s:

1. dense sweep over the admissible key tiles: the row max m and, per TILE x TILE tile, the max of s,
   written to the tile-max table (the backward reads it too);
2. threshold passes (``threshold.py``), starting from t = (alpha - 1) m - 1 <= tau; each pass visits
   only the key tiles where (alpha - 1) tile_max > min over the block's rows of t, until the support
   count proves t = tau;
3. output pass over the tiles live for tau: out = sum_j p_j v_j / sum_j p_j with
   p = [z - tau]_+^(1/(alpha-1)) (the division is exact for the exact tau and absorbs rounding).

No length is a compile-time constant: one compiled kernel serves every Nq, Nk.
"""

import torch
import triton
import triton.language as tl

from .entmax_rows import alpha_mode
from .threshold import entmax_power, threshold_stats, threshold_step

TILE = 64
MAX_STEPS = 32


@triton.jit
def _score_tile(
    q, K, Mask, k_base, mask_base, offs_m, offs_n, offs_d, stride_kn, stride_kd, stride_mm,
    stride_mn, Nq, Nk, D, scale,
    IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, PRECISION: tl.constexpr,
):
    """s = scale q k^T (+ float mask) for one key tile; -inf where excluded or out of range."""
    kt = tl.load(
        K + k_base + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
        mask=(offs_n[None, :] < Nk) & (offs_d[:, None] < D), other=0.0,
    )
    s = tl.dot(q, kt, input_precision=PRECISION) * scale
    valid = (offs_m[:, None] < Nq) & (offs_n[None, :] < Nk)
    if IS_CAUSAL:
        valid = valid & (offs_n[None, :] <= offs_m[:, None])
    if MASK_KIND != 0:
        mptr = Mask + mask_base + offs_m[:, None] * stride_mm + offs_n[None, :] * stride_mn
        if MASK_KIND == 1:
            valid = valid & (tl.load(mptr, mask=valid, other=0) != 0)
        else:
            s += tl.load(mptr, mask=valid, other=0.0).to(tl.float32)
    return tl.where(valid, s, float("-inf"))


@triton.jit
def _tile_live(tm_ptrs, kt, am1, t_min):
    """Can the tile hold some z > t? (per 64-row slice of the block, any slice)."""
    tmax = tl.load(tm_ptrs + kt)
    return tl.max(am1 * tmax - t_min, 0) > 0


@triton.jit
def adasplash_attention_fwd(
    Q, K, V, Mask, HeadAlpha, Out, Tau, TileMax,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_mb, stride_mh, stride_mm, stride_mn,
    Hq, G, Nq, Nk, D, DV, n_tiles_m, n_tiles_n, scale, alpha,
    IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, ALPHA_MODE: tl.constexpr,
    HEAD_ALPHA: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, MAX_STEPS: tl.constexpr,
):
    TILE_N: tl.constexpr = 64
    R: tl.constexpr = BLOCK_M // 64
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # longest causal blocks first
    bh = tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    hk = h // G
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    offs_t = tl.arange(0, TILE_N)

    q = tl.load(
        Q + b.to(tl.int64) * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm
        + offs_d[None, :] * stride_qd,
        mask=(offs_m[:, None] < Nq) & (offs_d[None, :] < D), other=0.0,
    )
    k_base = b.to(tl.int64) * stride_kb + hk * stride_kh
    v_base = b.to(tl.int64) * stride_vb + hk * stride_vh
    mask_base = b.to(tl.int64) * stride_mb + h * stride_mh
    if HEAD_ALPHA:
        am1 = tl.load(HeadAlpha + h).to(tl.float32) - 1.0
    else:
        am1 = alpha - 1.0
    k = 1.0 / am1

    if IS_CAUSAL:
        n_kt = tl.cdiv(tl.minimum(Nk, (pid_m + 1) * BLOCK_M), TILE_N)
    else:
        n_kt = tl.cdiv(Nk, TILE_N)
    slices = pid_m * R + tl.arange(0, R)
    tm_ptrs = TileMax + (bh.to(tl.int64) * n_tiles_m + slices) * n_tiles_n

    # 1. dense sweep: row max and tile-max table
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    for kt in range(0, n_kt):
        s = _score_tile(q, K, Mask, k_base, mask_base, offs_m, kt * TILE_N + offs_t, offs_d,
                        stride_kn, stride_kd, stride_mm, stride_mn, Nq, Nk, D, scale,
                        IS_CAUSAL, MASK_KIND, PRECISION)
        row_max = tl.max(s, 1)
        m = tl.maximum(m, row_max)
        tl.store(tm_ptrs + kt, tl.max(tl.reshape(row_max, (R, 64)), 1), mask=slices < n_tiles_m)
    tl.debug_barrier()

    # 2. threshold passes over live tiles
    empty = m == float("-inf")
    t = tl.where(empty, float("inf"), am1 * m - 1.0)
    lo = t
    hi = am1 * m
    prev = tl.full([BLOCK_M], -1.0, tl.float32)
    done = empty
    step = 0
    while (step < MAX_STEPS) & (tl.min(done.to(tl.int32), 0) == 0):
        t_min = tl.min(tl.reshape(t, (R, 64)), 1)
        count = tl.zeros([BLOCK_M], tl.float32)
        s1 = tl.zeros([BLOCK_M], tl.float32)
        s2 = tl.zeros([BLOCK_M], tl.float32)
        for kt in range(0, n_kt):
            if _tile_live(tm_ptrs, kt, am1, t_min):
                s = _score_tile(q, K, Mask, k_base, mask_base, offs_m, kt * TILE_N + offs_t,
                                offs_d, stride_kn, stride_kd, stride_mm, stride_mn, Nq, Nk, D,
                                scale, IS_CAUSAL, MASK_KIND, PRECISION)
                c0, c1, c2 = threshold_stats(tl.maximum(am1 * s - t[:, None], 0.0), ALPHA_MODE, k)
                count += c0
                s1 += c1
                s2 += c2
        t, lo, hi, prev, done = threshold_step(t, lo, hi, count, s1, s2, prev, k, ALPHA_MODE)
        step += 1

    # 3. output pass over the tiles live for tau
    t_min = tl.min(tl.reshape(t, (R, 64)), 1)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    for kt in range(0, n_kt):
        if _tile_live(tm_ptrs, kt, am1, t_min):
            offs_n = kt * TILE_N + offs_t
            s = _score_tile(q, K, Mask, k_base, mask_base, offs_m, offs_n, offs_d, stride_kn,
                            stride_kd, stride_mm, stride_mn, Nq, Nk, D, scale, IS_CAUSAL,
                            MASK_KIND, PRECISION)
            p = entmax_power(tl.maximum(am1 * s - t[:, None], 0.0), k, ALPHA_MODE)
            l += tl.sum(p, 1)
            v = tl.load(
                V + v_base + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd,
                mask=(offs_n[:, None] < Nk) & (offs_dv[None, :] < DV), other=0.0,
            )
            acc += tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    out = acc / tl.where(l > 0, l, 1.0)[:, None]
    o_rows = (bh.to(tl.int64) * Nq + offs_m)
    tl.store(Out + o_rows[:, None] * DV + offs_dv[None, :], out.to(Out.dtype.element_ty),
             mask=(offs_m[:, None] < Nq) & (offs_dv[None, :] < DV))
    tl.store(Tau + o_rows, t, mask=offs_m < Nq)


def _identity(kernel):
    return kernel


def mask_4d(attn_mask):
    """(mask as 4-D, its 4 strides with 0 on broadcast dims, MASK_KIND) for a kernel launch."""
    if attn_mask is None:
        return None, (0, 0, 0, 0), 0
    m = attn_mask.reshape((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))
    strides = tuple(m.stride(i) if m.shape[i] > 1 else 0 for i in range(4))
    if m.dtype == torch.bool:
        return m.view(torch.uint8), strides, 1
    return m, strides, 2


def dot_precision(dtype: torch.dtype) -> str:
    """IEEE dots for float32 inputs (tf32 would cost ~1e-3); tensor cores for 16-bit ones."""
    return "ieee" if dtype == torch.float32 else "tf32"


def attention_forward(q, k, v, attn_mask, is_causal, scale, alpha, head_alpha=None,
                      launch=_identity):
    """(out, tau, tile_max) as ``lowering.reference.attention_forward`` (no dropout).

    q (B, Hq, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, DV), any strides; head_alpha: None or a
    (Hq,) tensor. tau is in units of z = (alpha - 1) s, +inf for rows with no admissible key.
    """
    B, Hq, Nq, D = q.shape
    Hkv, Nk, DV = k.shape[1], k.shape[2], v.shape[-1]
    out = torch.empty((B, Hq, Nq, DV), dtype=q.dtype, device=q.device)
    tau = torch.empty((B, Hq, Nq), dtype=torch.float32, device=q.device)
    n_tm, n_tn = triton.cdiv(Nq, TILE), triton.cdiv(Nk, TILE)
    tile_max = torch.full((B, Hq, n_tm, n_tn), float("-inf"), dtype=torch.float32, device=q.device)
    if B * Hq * Nq == 0:
        return out, tau, tile_max
    mask, ms, mask_kind = mask_4d(attn_mask)
    block_d, block_dv = max(16, triton.next_power_of_2(D)), max(16, triton.next_power_of_2(DV))
    block_m = 64 if max(block_d, block_dv) > 128 or Nq <= 64 else 128
    per_head = head_alpha is not None
    grid = (triton.cdiv(Nq, block_m), B * Hq)
    launch(adasplash_attention_fwd)[grid](
        q, k, v, mask if mask is not None else q, head_alpha if per_head else q, out, tau, tile_max,
        *q.stride(), *k.stride(), *v.stride(), *ms,
        Hq, Hq // Hkv, Nq, Nk, D, DV, n_tm, n_tn,
        float(scale if scale is not None else D ** -0.5), float(alpha),
        IS_CAUSAL=bool(is_causal), MASK_KIND=mask_kind, ALPHA_MODE=alpha_mode(alpha, per_head),
        HEAD_ALPHA=per_head, PRECISION=dot_precision(q.dtype), BLOCK_M=block_m,
        BLOCK_D=block_d, BLOCK_DV=block_dv, MAX_STEPS=MAX_STEPS,
        num_warps=8 if block_m == 128 else 4, num_stages=2,
    )
    return out, tau, tile_max
