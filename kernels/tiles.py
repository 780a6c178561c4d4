"""Triton helpers shared by the attention kernels: tile loads and masked scores."""

import triton
import triton.language as tl


@triton.jit
def load_tile(ptr, offs_r, offs_c, stride_r, stride_c, n_r, n_c):
    """A (rows x cols) tile, zero outside [0, n_r) x [0, n_c)."""
    return tl.load(ptr + offs_r[:, None] * stride_r + offs_c[None, :] * stride_c,
                   mask=(offs_r[:, None] < n_r) & (offs_c[None, :] < n_c), other=0.0)


@triton.jit
def mask_tile(Mask, MDesc, mask_base, mb, mh, m0, n0, offs_m, offs_n, stride_mm, stride_mn, Nq, Nk,
              MASK_KIND: tl.constexpr, MASK_TMA: tl.constexpr):
    """The mask's entries for the queries offs_m = m0, m0 + 1, ... and the keys offs_n = n0, ...
    (0 outside [0, Nq) x [0, Nk)); 0 (unused) without a mask (MASK_KIND 0). MASK_TMA: 1 through
    MDesc, a TMA descriptor of the mask in (1, 1, queries, keys) boxes, at (mb, mh, m0, n0) (mb,
    mh: 0 on dims the mask broadcasts); 2 through one in (1, 1, 1, keys) boxes of its one query
    row, broadcast; 0 by pointers from Mask + mask_base."""
    if MASK_KIND == 0:
        return 0
    elif MASK_TMA == 1:
        return tl.reshape(MDesc.load([mb, mh, m0, n0]), (offs_m.shape[0], offs_n.shape[0]))
    elif MASK_TMA == 2:
        row = tl.reshape(MDesc.load([mb, mh, 0, n0]), (1, offs_n.shape[0]))
        return tl.broadcast_to(row, (offs_m.shape[0], offs_n.shape[0]))
    else:
        return tl.load(Mask + mask_base + offs_m[:, None] * stride_mm + offs_n[None, :] * stride_mn,
                       mask=(offs_m[:, None] < Nq) & (offs_n[None, :] < Nk), other=0)


@triton.jit
def pointer_mask_tile(Mask, mask_base, offs_m, offs_n, stride_mm, stride_mn, Nq, Nk,
                      MASK_KIND: tl.constexpr):
    """``mask_tile`` by pointers alone (no descriptor), for a tile loaded apart."""
    return mask_tile(Mask, Mask, mask_base, 0, 0, 0, 0, offs_m, offs_n, stride_mm, stride_mn, Nq,
                     Nk, MASK_KIND, 0)


@triton.jit
def mask_scores(s, mt, offs_m, offs_n, Nq, Nk, IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr,
                BOUNDS: tl.constexpr):
    """Add a float mask tile mt (``mask_tile``) to the (query x key) scores s and set -inf where a
    bool mask tile, causality (key > query) or the ranges exclude. BOUNDS=False skips the range
    and causal checks."""
    if BOUNDS or MASK_KIND != 0:
        valid = (offs_m[:, None] < Nq) & (offs_n[None, :] < Nk)
        if IS_CAUSAL:
            valid = valid & (offs_n[None, :] <= offs_m[:, None])
        if MASK_KIND == 1:
            valid = valid & (mt != 0)
        elif MASK_KIND == 2:
            s += mt.to(tl.float32)
        s = tl.where(valid, s, float("-inf"))
    return s


@triton.jit
def key_tile(K, KDesc, k_base, b, hk, n0, offs_n, offs_d, stride_kn, stride_kd, Nk, D,
             KEY_TMA: tl.constexpr):
    """The keys offs_n = n0, n0 + 1, ... of head (b, hk) as a (D x keys) tile, zero past Nk and
    D: through KDesc, a TMA descriptor of K in (1, 1, keys, BLOCK_D) boxes, if KEY_TMA, else by
    pointers from K + k_base."""
    if KEY_TMA:
        return tl.trans(tl.reshape(KDesc.load([b, hk, n0, 0]), (offs_n.shape[0], offs_d.shape[0])))
    return load_tile(K + k_base, offs_d, offs_n, stride_kd, stride_kn, D, Nk)


@triton.jit
def value_tile(V, VDesc, v_base, b, hk, n0, offs_n, offs_dv, stride_vn, stride_vd, Nk, DV,
               VALUE_TMA: tl.constexpr):
    """The values offs_n = n0, n0 + 1, ... as a (keys x DV) tile, as ``key_tile``."""
    if VALUE_TMA:
        return tl.reshape(VDesc.load([b, hk, n0, 0]), (offs_n.shape[0], offs_dv.shape[0]))
    return load_tile(V + v_base, offs_n, offs_dv, stride_vn, stride_vd, Nk, DV)


@triton.jit
def score_tile(q, kt, mt, offs_m, offs_n, Nq, Nk, scale, IS_CAUSAL: tl.constexpr,
               MASK_KIND: tl.constexpr, PRECISION: tl.constexpr, BOUNDS: tl.constexpr):
    """s = scale q kt (+ mask) for the keys offs_n, with q (rows x D), kt (D x keys) and the mask
    tile mt (``mask_tile``) loaded."""
    s = tl.dot(q, kt, input_precision=PRECISION) * scale
    return mask_scores(s, mt, offs_m, offs_n, Nq, Nk, IS_CAUSAL, MASK_KIND, BOUNDS)


@triton.jit
def shift_scores(qk, mt, offs_m, offs_n, Nq, Nk, scale, mult, m, t, IS_CAUSAL: tl.constexpr,
                 MASK_KIND: tl.constexpr, BOUNDS: tl.constexpr):
    """mult (s - m) - t for the products qk = q k^T (mult > 0 a scalar; m, t one value per row),
    s = scale qk (+ mask) as ``score_tile``.

    Without a float mask this is one FMA per entry, (mult scale) qk - (mult m + t), instead of
    the four operations of scaling, shifting and multiplying s: the sparse passes are bound by
    such per-entry work. (A float mask can hold values like finfo.min, next to which mult m + t
    rounds t away: then s - m comes first.)"""
    if MASK_KIND == 2:
        s = mask_scores(qk * scale, mt, offs_m, offs_n, Nq, Nk, IS_CAUSAL, MASK_KIND, BOUNDS)
        return mult * (s - m[:, None]) - t[:, None]
    else:
        # mult > 0 keeps every excluded entry at -inf
        return mask_scores(qk * (mult * scale), mt, offs_m, offs_n, Nq, Nk, IS_CAUSAL, MASK_KIND,
                           BOUNDS) - (mult * m + t)[:, None]


@triton.jit
def shifted_scores(q, kt, mt, offs_m, offs_n, Nq, Nk, scale, mult, m, t, IS_CAUSAL: tl.constexpr,
                   MASK_KIND: tl.constexpr, PRECISION: tl.constexpr, BOUNDS: tl.constexpr):
    """``shift_scores`` of q (rows x D) and the key tile kt (D x keys) loaded."""
    return shift_scores(tl.dot(q, kt, input_precision=PRECISION), mt, offs_m, offs_n, Nq, Nk,
                        scale, mult, m, t, IS_CAUSAL, MASK_KIND, BOUNDS)
