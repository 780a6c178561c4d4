"""Pure-PyTorch reference of alpha-entmax and entmax attention; runs on any device.

Convention (the ``entmax.entmax_bisect`` one): for scores x over the last axis,

    p_j = [(alpha - 1) x_j - tau]_+ ** (1 / (alpha - 1)),   tau such that sum_j p_j = 1.

alpha = 2 is sparsemax, alpha -> 1 is softmax. With u = p ** (2 - alpha) on the support, the
Jacobian-vector product is dx = u * (g - sum(u g) / sum(u)), and

    dp_j / dalpha = (p_j - uh_j) / (alpha - 1)**2 - (p_j log p_j - uh_j H) / (alpha - 1),

with uh = u / sum(u) and H = sum_j p_j log p_j. Entries equal to -inf are excluded; a row with no
finite entry gets p = 0 and tau = +inf. Half-precision inputs are computed in float32.

Everything works relative to the row max m: z = (alpha - 1)(x - m) has max 0, and the tau saved by
attention is relative too (tau_rel = tau - (alpha - 1) m, in [-1, 0]). Absolute values would round
tau away for huge |x| (rows of finfo.min masks).
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F

from .layout import TILE

Alpha = Union[float, torch.Tensor]

_MAX_NEWTON_STEPS = 100
_BLOCK_ELEMENTS = 1 << 22  # attention scores held at once, per query block


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _is_const(alpha: Alpha, value: float) -> bool:
    return not isinstance(alpha, torch.Tensor) and float(alpha) == value


# ----------------------------------------------------------------------------------------------
# Threshold tau over the last axis of z = (alpha - 1)(x - max x).
# ----------------------------------------------------------------------------------------------


def relative_scores(x: torch.Tensor, alpha: Alpha, m: Optional[torch.Tensor] = None):
    """(z, m): z = (alpha - 1)(x - m) over the last axis with m the row max (keepdim; computed
    unless given). m is -inf for rows with no finite entry; z then stays -inf there.
    """
    if m is None:
        m = x.amax(-1, keepdim=True)
    shift = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    return (x - shift) * (alpha - 1.0), m


def _sorted_prefix(z: torch.Tensor):
    """z sorted descending with -inf entries zeroed, the admissibility mask and 1..n ranks."""
    zs = torch.sort(z, dim=-1, descending=True).values
    finite = torch.isfinite(zs)
    zs = torch.where(finite, zs, torch.zeros_like(zs))
    rho = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    return zs, finite, rho


def _tau_sparsemax(z: torch.Tensor) -> torch.Tensor:
    """Exact tau for alpha = 2: largest k with 1 + k z_(k) > sum_{i<=k} z_(i)."""
    zs, finite, rho = _sorted_prefix(z)
    csum = zs.cumsum(-1)
    support = finite & (1 + rho * zs > csum)
    k = support.sum(-1, keepdim=True).clamp_min(1)
    return (csum.gather(-1, k - 1) - 1) / k


def _tau_entmax15(z: torch.Tensor) -> torch.Tensor:
    """Exact tau for alpha = 1.5 (sort-based; Peters et al. 2019), z = x / 2."""
    zs, finite, rho = _sorted_prefix(z)
    mean = zs.cumsum(-1) / rho
    mean_sq = (zs * zs).cumsum(-1) / rho
    ss = rho * (mean_sq - mean * mean)
    tau = mean - torch.sqrt(((1 - ss) / rho).clamp_min(0))
    k = (finite & (tau <= zs)).sum(-1, keepdim=True).clamp_min(1)
    return tau.gather(-1, k - 1)


def _tau_newton(z: torch.Tensor, alpha: Alpha) -> torch.Tensor:
    """Bracketed Newton on f(tau) = sum_j [z_j - tau]_+^(1/(alpha-1)) - 1 (z already shifted).

    f is decreasing; f(-1) >= 0 and f(-n^(1-alpha)) <= 0 bracket the root. A Newton step that
    leaves the bracket is replaced by bisection, unless it is at rounding level: then f(tau) is
    too, its sign is noise, and tau has converged.
    """
    k = 1.0 / (alpha - 1.0)
    n = torch.isfinite(z).sum(-1, keepdim=True).clamp_min(1).to(z.dtype)
    lo = torch.full_like(n, -1.0)
    hi = -torch.pow(n, 1.0 - alpha)
    tau = lo.clone()
    tiny = torch.finfo(z.dtype).eps
    for _ in range(_MAX_NEWTON_STEPS):
        d = (z - tau).clamp_min(0)
        live = d > 0
        f = torch.pow(d, k).sum(-1, keepdim=True) - 1
        fp = -k * torch.where(live, torch.pow(d, k - 1), torch.zeros_like(d)).sum(-1, keepdim=True)
        lo = torch.where(f >= 0, tau, lo)
        hi = torch.where(f < 0, tau, hi)
        newton = tau - f / fp
        tol = 4 * tiny * tau.abs().clamp_min(1)
        small = (newton - tau).abs() <= tol
        inside = (newton > lo) & (newton < hi)
        new_tau = torch.where(inside, newton, torch.where(small, tau, (lo + hi) / 2))
        done = small | ((new_tau - tau).abs() <= tol)
        tau = new_tau
        if bool(done.all()):
            break
    return tau


def _candidates(zs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed, empty) for zs whose finite rows have max 0: the entries > -1 of each row packed
    into K columns (K = the most in any row, -inf after a row's own) when that halves the width
    at least, else zs itself; empty (keepdim) marks the rows with no finite entry.

    tau >= -1 (the max alone gives f(-1) >= 0), so an entry <= -1 is never in the support and tau
    on these columns is tau on all of them: the sort and the iterations then run over K columns.
    """
    keep = zs > -1
    count = keep.sum(-1, keepdim=True)
    n = zs.shape[-1]
    k = max(int(count.amax()), 1) if zs.numel() else n
    if k > n // 2:
        return zs, count == 0
    # every dropped entry goes to one extra column, cut off after the scatter
    slot = torch.where(keep, keep.cumsum(-1) - 1, k)
    packed = zs.new_full((*zs.shape[:-1], k + 1), -math.inf)
    return packed.scatter_(-1, slot, zs)[..., :k], count == 0


def relative_threshold(z: torch.Tensor, alpha: Alpha) -> torch.Tensor:
    """tau (keepdim over the last axis) for z = (alpha - 1)(x - max x), as ``relative_scores``
    gives; +inf for rows with no finite entry. alpha: a float or a tensor broadcastable to
    z[..., :1]."""
    zs, empty = _candidates(z)
    if _is_const(alpha, 2.0):
        tau = _tau_sparsemax(zs)
    elif _is_const(alpha, 1.5):
        tau = _tau_entmax15(zs)
    else:
        tau = _tau_newton(zs, alpha)
    return torch.where(empty, torch.full_like(tau, math.inf), tau)


def threshold(z: torch.Tensor, alpha: Alpha) -> torch.Tensor:
    """``relative_threshold`` for any z = (alpha - 1) x: solved relative to the row max."""
    zmax = z.amax(-1, keepdim=True)
    zmax = torch.where(torch.isneginf(zmax), torch.zeros_like(zmax), zmax)
    return relative_threshold(z - zmax, alpha) + zmax


def probabilities(z: torch.Tensor, tau: torch.Tensor, alpha: Alpha) -> torch.Tensor:
    """p = [z - tau]_+ ** (1 / (alpha - 1)); 0 wherever z = -inf or tau = +inf."""
    d = (z - tau).clamp_min(0)
    d = torch.where(torch.isnan(d), torch.zeros_like(d), d)
    if _is_const(alpha, 2.0):
        return d
    if _is_const(alpha, 1.5):
        return d * d
    return torch.pow(d, 1.0 / (alpha - 1.0))


def _support_weights(p: torch.Tensor, alpha: Alpha) -> torch.Tensor:
    """u = p ** (2 - alpha) on the support, 0 elsewhere."""
    live = p > 0
    if _is_const(alpha, 2.0):
        return live.to(p.dtype)
    if _is_const(alpha, 1.5):
        return torch.sqrt(p)
    return torch.where(live, torch.pow(torch.where(live, p, torch.ones_like(p)), 2.0 - alpha), 0.0)


def entmax_jvp(p: torch.Tensor, g: torch.Tensor, alpha: Alpha) -> torch.Tensor:
    """Gradient w.r.t. the scores, over the last axis: u * (g - sum(u g) / sum(u))."""
    u = _support_weights(p, alpha)
    usum = u.sum(-1, keepdim=True)
    delta = (u * g).sum(-1, keepdim=True) / torch.where(usum > 0, usum, torch.ones_like(usum))
    return u * (g - delta)


def normalized_support_weights(p: torch.Tensor, alpha: Alpha) -> torch.Tensor:
    """uh = u / sum(u) over the last axis (0 on rows with no support)."""
    u = _support_weights(p, alpha)
    usum = u.sum(-1, keepdim=True)
    return u / torch.where(usum > 0, usum, torch.ones_like(usum))


def entmax_alpha_vjp(p: torch.Tensor, g: torch.Tensor, alpha: Alpha) -> torch.Tensor:
    """sum_j g_j dp_j/dalpha per row (keepdim over the last axis)."""
    uh = normalized_support_weights(p, alpha)
    plogp = torch.where(p > 0, p * torch.log(torch.where(p > 0, p, torch.ones_like(p))), 0.0)
    ent = plogp.sum(-1, keepdim=True)
    am1 = alpha - 1.0
    dp = (p - uh) / (am1 * am1) - (plogp - uh * ent) / am1
    return (g * dp).sum(-1, keepdim=True)


# ----------------------------------------------------------------------------------------------
# Standalone entmax.
# ----------------------------------------------------------------------------------------------


def _alpha_keepdim(alpha: Alpha, ndim: int, dim: int, dtype: torch.dtype) -> Alpha:
    """A tensor alpha broadcastable to x.shape-without-dim, reshaped to keep dim as size 1."""
    if not isinstance(alpha, torch.Tensor):
        return float(alpha)
    a = alpha.to(dtype)
    a = a.reshape((1,) * (ndim - 1 - a.dim()) + tuple(a.shape))
    return a.unsqueeze(dim % ndim)


def entmax_forward(x: torch.Tensor, alpha: Alpha, dim: int = -1) -> torch.Tensor:
    """alpha-entmax of x along dim."""
    cd = compute_dtype(x.dtype)
    a = _alpha_keepdim(alpha, x.dim(), dim, cd)
    a_last = a.movedim(dim, -1) if isinstance(a, torch.Tensor) else a
    z, _ = relative_scores(x.to(cd).movedim(dim, -1), a_last)
    with torch.no_grad():
        tau = relative_threshold(z, a_last)
    return probabilities(z, tau, a_last).movedim(-1, dim).to(x.dtype)


def entmax_backward(
    grad: torch.Tensor, p: torch.Tensor, alpha: Alpha, dim: int, alpha_shape: Optional[torch.Size]
):
    """(dx, dalpha) for p = entmax(x, alpha, dim); dalpha is None unless alpha_shape is given."""
    cd = compute_dtype(p.dtype)
    a = _alpha_keepdim(alpha, p.dim(), dim, cd)
    a_last = a.movedim(dim, -1) if isinstance(a, torch.Tensor) else a
    pl = p.to(cd).movedim(dim, -1)
    gl = grad.to(cd).movedim(dim, -1)
    dx = entmax_jvp(pl, gl, a_last).movedim(-1, dim).to(p.dtype)
    if alpha_shape is None:
        return dx, None
    da = entmax_alpha_vjp(pl, gl, a_last).squeeze(-1)
    lead = da.dim() - len(alpha_shape)
    da = da.sum(tuple(range(lead))) if lead > 0 else da
    return dx, da.sum_to_size(alpha_shape).to(alpha.dtype if isinstance(alpha, torch.Tensor) else cd)


# ----------------------------------------------------------------------------------------------
# Entmax attention, one block of query rows at a time (memory O(block x Nk)).
# ----------------------------------------------------------------------------------------------


class _Problem:
    """Shapes and broadcast views of one attention call, with queries grouped by kv head.

    Query head h uses kv head h // G (G = Hq / Hkv), so q is viewed as (B, Hkv, G, Nq, D) and
    k, v as (B, Hkv, 1, Nk, D); masks and per-head alphas get the same 5-D layout.
    """

    def __init__(self, q, k, v, attn_mask, is_causal, scale, alpha, head_alpha):
        self.B, self.Hq, self.Nq, self.D = q.shape
        self.Hkv, self.Nk = k.shape[1], k.shape[2]
        self.G = self.Hq // self.Hkv
        self.cd = compute_dtype(q.dtype)
        self.scale = scale if scale is not None else 1.0 / math.sqrt(self.D)
        self.is_causal = is_causal
        self.q = q.unflatten(1, (self.Hkv, self.G))
        self.k = k.unsqueeze(2)
        self.v = v.unsqueeze(2)
        self.mask = None if attn_mask is None else self._group(self._as_4d(attn_mask))
        if head_alpha is not None:
            self.alpha = head_alpha.to(self.cd).view(1, self.Hkv, self.G, 1, 1)
        else:
            self.alpha = float(alpha)
        rows = max(1, _BLOCK_ELEMENTS // max(1, self.B * self.Hq * self.Nk))
        self.block = TILE * max(1, rows // TILE)

    @staticmethod
    def _as_4d(mask: torch.Tensor) -> torch.Tensor:
        return mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))

    def _group(self, mask4: torch.Tensor) -> torch.Tensor:
        if mask4.shape[1] == 1:
            return mask4.unsqueeze(2)
        return mask4.unflatten(1, (self.Hkv, self.G))

    def blocks(self):
        for r0 in range(0, self.Nq, self.block):
            yield r0, min(self.Nq, r0 + self.block)

    def mask_rows(self, r0: int, r1: int) -> Optional[torch.Tensor]:
        if self.mask is None:
            return None
        return self.mask if self.mask.shape[-2] == 1 else self.mask[..., r0:r1, :]

    def scores(self, r0: int, r1: int) -> torch.Tensor:
        """s = scale q k^T + float mask, -inf where a bool mask or causality excludes."""
        cd = self.cd
        s = torch.matmul(self.q[..., r0:r1, :].to(cd), self.k.to(cd).transpose(-1, -2)) * self.scale
        m = self.mask_rows(r0, r1)
        if m is not None:
            s = s.masked_fill(~m, -math.inf) if m.dtype == torch.bool else s + m.to(cd)
        if self.is_causal:
            rows = torch.arange(r0, r1, device=s.device).unsqueeze(-1)
            cols = torch.arange(self.Nk, device=s.device)
            s = s.masked_fill(cols > rows, -math.inf)
        return s

    def tile_max(self, s: torch.Tensor) -> torch.Tensor:
        """max over each TILE x TILE tile of a row block -> (B, Hq, rows/TILE, Nk/TILE)."""
        r, n = s.shape[-2], s.shape[-1]
        pad_r, pad_n = -r % TILE, -n % TILE
        s = F.pad(s, (0, pad_n, 0, pad_r), value=-math.inf)
        s = s.unflatten(-2, ((r + pad_r) // TILE, TILE)).unflatten(-1, ((n + pad_n) // TILE, TILE))
        return s.amax((-3, -1)).flatten(1, 2)

    def dropout_keep(self, seed: int, r0: int, shape, p: float) -> torch.Tensor:
        """Keep-mask of one row block, regenerated identically in forward and backward."""
        gen = torch.Generator(device=self.q.device)
        gen.manual_seed((seed * 1_000_003 + r0) % (1 << 63))
        return torch.rand(shape, generator=gen, device=self.q.device, dtype=self.cd) >= p


def _seed(dropout_p: float, dropout_seed: Optional[torch.Tensor]) -> int:
    if dropout_p <= 0:
        return 0
    if dropout_seed is None:
        raise ValueError("dropout_p > 0 needs a dropout_seed tensor")
    return int(dropout_seed.reshape(-1)[0].item())


def attention_forward(
    q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, alpha=1.5,
    head_alpha=None, dropout_seed=None, for_backward=False,
):
    """(out, tau, row_max, tile_max, u_shift) of entmax attention (DESIGN.md section 1).

    With s the masked scaled scores: row_max (B, Hq, Nq) is max_j s_ij (-inf for rows with no
    admissible key), tau (B, Hq, Nq) the threshold relative to it, p = [(alpha-1)(s - row_max) -
    tau]_+^(1/(alpha-1)) (+inf for empty rows). tile_max (B, Hq, ceil(Nq/TILE), ceil(Nk/TILE)) is
    max (s_ij - row_max_i) over each TILE x TILE tile (-inf where all excluded; the kernels may
    store any upper bound of it, and -inf for a tile whose p are all zero): a tile holds a nonzero
    p only if tile_max > tau_i / (alpha - 1) for one of its rows i. u_shift (out's shape and
    dtype, 0 elements unless for_backward) is u_mean - out, u_mean = sum_j u_ij keep_ij v_j /
    sum_j u_ij with u = p^(2 - alpha) and keep the dropout scaling, so that the backward's
    delta = sum_j u_ij dP_ij / sum_j u_ij is rowsum(dO * (out + u_shift)). (Relative to the out
    stored, u_shift is small where the values share a large common part, which 16 bits would
    lose in u_mean itself.)
    """
    P = _Problem(q, k, v, attn_mask, is_causal, scale, alpha, head_alpha)
    seed = _seed(dropout_p, dropout_seed)
    out = q.new_empty(P.B, P.Hq, P.Nq, v.shape[-1])
    u_shift = q.new_empty(out.shape if for_backward else (0,))
    tau = q.new_empty((P.B, P.Hq, P.Nq), dtype=P.cd)
    row_max = torch.empty_like(tau)
    tmax = q.new_empty((P.B, P.Hq, -(-P.Nq // TILE), -(-P.Nk // TILE)), dtype=P.cd)
    a = P.alpha
    with torch.no_grad():
        for r0, r1 in P.blocks():
            s = P.scores(r0, r1)
            z, m = relative_scores(s, a)
            t = relative_threshold(z, a)
            p = probabilities(z, t, a)
            weights = [p] + ([normalized_support_weights(p, a)] if for_backward else [])
            if dropout_p > 0:
                keep = P.dropout_keep(seed, r0, p.shape, dropout_p)
                weights = [w * keep / (1.0 - dropout_p) for w in weights]
            o = torch.matmul(weights[0], P.v.to(P.cd))
            out[:, :, r0:r1] = o.flatten(1, 2).to(out.dtype)
            if for_backward:
                u_mean = torch.matmul(weights[1], P.v.to(P.cd)).flatten(1, 2)
                u_shift[:, :, r0:r1] = u_mean - out[:, :, r0:r1].to(P.cd)
            tau[:, :, r0:r1] = t.squeeze(-1).flatten(1, 2)
            row_max[:, :, r0:r1] = m.squeeze(-1).flatten(1, 2)
            tmax[:, :, r0 // TILE: -(-r1 // TILE)] = P.tile_max(s - torch.where(torch.isinf(m), 0.0, m))
    return out, tau, row_max, tmax, u_shift


def attention_backward(
    grad_out, q, k, v, tau, row_max, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
    alpha=1.5, head_alpha=None, dropout_seed=None, need_mask_grad=False, need_alpha_grad=False,
):
    """(dq, dk, dv, dalpha, dmask) of entmax attention, recomputing p from (tau, row_max) block
    by block.

    dS = u * (dP - delta) with dP = dO v^T (dropout applied), u = p^(2-alpha) and
    delta = sum(u dP) / sum(u); dq = scale dS k, dk = scale dS^T q, dv = p^T dO.
    dalpha (Hq,) and dmask (attn_mask's shape) are empty tensors unless asked for.
    """
    P = _Problem(q, k, v, attn_mask, is_causal, scale, alpha, head_alpha)
    seed = _seed(dropout_p, dropout_seed)
    cd, a = P.cd, P.alpha
    do = grad_out.unflatten(1, (P.Hkv, P.G))
    dq = torch.empty(q.shape, dtype=cd, device=q.device)
    dk = torch.zeros(k.shape, dtype=cd, device=q.device)
    dv = torch.zeros(v.shape, dtype=cd, device=q.device)
    da = torch.zeros(P.Hkv, P.G, dtype=cd, device=q.device)
    dmask = None
    if need_mask_grad:
        dmask = torch.zeros(P._as_4d(attn_mask).shape, dtype=cd, device=q.device)
    kc, vc = P.k.to(cd), P.v.to(cd)
    with torch.no_grad():
        for r0, r1 in P.blocks():
            rows = (slice(None), slice(None), slice(r0, r1))
            m = row_max[rows].unflatten(1, (P.Hkv, P.G)).unsqueeze(-1).to(cd)
            z, _ = relative_scores(P.scores(r0, r1), a, m)
            t = tau[rows].unflatten(1, (P.Hkv, P.G)).unsqueeze(-1).to(cd)
            p = probabilities(z, t, a)
            dob = do[..., r0:r1, :].to(cd)
            dp = torch.matmul(dob, vc.transpose(-1, -2))
            pd = p
            if dropout_p > 0:
                keep = P.dropout_keep(seed, r0, p.shape, dropout_p) / (1.0 - dropout_p)
                pd, dp = p * keep, dp * keep
            dv += _sum_groups(pd.transpose(-1, -2), dob)
            ds = entmax_jvp(p, dp, a)
            if need_alpha_grad:
                da += entmax_alpha_vjp(p, dp, a).sum((0, 3, 4))
            dq[:, :, r0:r1] = (torch.matmul(ds, kc) * P.scale).flatten(1, 2)
            dk += _sum_groups(ds.transpose(-1, -2), P.q[..., r0:r1, :].to(cd)) * P.scale
            if dmask is not None:
                _accumulate_mask_grad(dmask, ds.flatten(1, 2), r0, r1)
    dalpha = da.flatten().to(head_alpha.dtype) if need_alpha_grad else q.new_empty(0)
    if dmask is None:
        dmask = q.new_empty(0)
    else:
        dmask = dmask.reshape(attn_mask.shape).to(attn_mask.dtype)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dalpha, dmask


def _sum_groups(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum over the G query heads of a kv head: (B,Hkv,G,X,r) @ (B,Hkv,G,r,Y) -> (B,Hkv,X,Y)."""
    return torch.matmul(a, b).sum(2)


def _accumulate_mask_grad(dmask: torch.Tensor, ds: torch.Tensor, r0: int, r1: int) -> None:
    """Add the score gradient of rows r0:r1 into the (broadcast, 4-D) mask gradient."""
    if dmask.shape[-2] == 1:
        dmask += ds.sum_to_size(dmask.shape)
    else:
        target = dmask[..., r0:r1, :]
        target += ds.sum_to_size(target.shape)


def support_size(q, k, tau, row_max, attn_mask=None, is_causal=False, scale=None, alpha=1.5,
                 head_alpha=None):
    """(B, Hq, Nq) number of keys with p > 0 per query row, from the saved (tau, row_max)."""
    P = _Problem(q, k, k, attn_mask, is_causal, scale, alpha, head_alpha)
    a = P.alpha
    count = torch.empty(tau.shape, dtype=torch.int64, device=q.device)
    with torch.no_grad():
        for r0, r1 in P.blocks():
            rows = (slice(None), slice(None), slice(r0, r1))
            m = row_max[rows].unflatten(1, (P.Hkv, P.G)).unsqueeze(-1).to(P.cd)
            z, _ = relative_scores(P.scores(r0, r1), a, m)
            t = tau[rows].unflatten(1, (P.Hkv, P.G)).unsqueeze(-1).to(P.cd)
            count[rows] = (probabilities(z, t, a) > 0).sum(-1).flatten(1, 2)
    return count
