"""Attention inputs with a controlled block sparsity, and the exact measurement of that sparsity.

Generator: per head a random unit direction c (shared by every batch element and position), and

    q = rope(a * c + noise_q),   k = rope(a * c + noise_k),   v = noise_v,

with i.i.d. standard normal noise and RoPE (base 10000, half-split pairs) over the positions.
After RoPE, q_i . k_j ~ a^2 sum_f |c_f|^2 cos(theta_f (i - j)) + noise: the larger ``a``, the more
the scores peak around the diagonal, the more local the attention and the more 64 x 64 tiles of
the entmax weights are all zero. ``a = 0`` is pure noise (block sparsity about 0).

Block sparsity: among the TILE x TILE (query, key) tiles with at least one admissible entry
(causal: key <= query), the fraction whose entmax weights are all zero; p_ij > 0 iff
(alpha - 1) s_ij > tau_i with s = q k^T / sqrt(D). It is measured exactly from dense fp32 scores,
a chunk of query rows at a time, with tau given (e.g. the op's) or computed by the exact reference.
``calibrate`` finds ``a`` for a target sparsity by bisection on a subsample.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional

import torch
import torch.nn.functional as F

from lowering import TILE, reference

ROPE_BASE = 10000.0
A_MAX = 256.0  # largest a the calibration tries
_MAX_SCORES = 1 << 26  # fp32 scores held at once while measuring


def rope(x: torch.Tensor, base: float = ROPE_BASE) -> torch.Tensor:
    """Rotary embedding over dim -2 (positions 0..N-1), pairs (f, f + D/2) rotated by pos * theta_f."""
    n, d = x.shape[-2], x.shape[-1]
    theta = base ** (-torch.arange(0, d // 2, device=x.device, dtype=torch.float32) * 2 / d)
    angle = torch.arange(n, device=x.device, dtype=torch.float32)[:, None] * theta
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def query_key(batch: int, heads: int, seq: int, head_dim: int, a: float, *, dtype: torch.dtype,
              device, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k = rope(a * c + noise), c a random unit direction per head (see the module docstring)."""
    c = torch.randn(heads, 1, head_dim, device=device, generator=generator)
    c = a * c / c.norm(dim=-1, keepdim=True)
    shape = (batch, heads, seq, head_dim)
    q = rope(c + torch.randn(shape, device=device, generator=generator))
    k = rope(c + torch.randn(shape, device=device, generator=generator))
    return q.to(dtype), k.to(dtype)


def attention_inputs(batch: int, heads: int, seq: int, head_dim: int, a: float, *,
                     dtype: torch.dtype, device, seed: int) -> tuple[torch.Tensor, ...]:
    """(q, k, v), contiguous (B, H, N, D), reproducible from ``seed``."""
    gen = torch.Generator(device=device).manual_seed(seed)
    q, k = query_key(batch, heads, seq, head_dim, a, dtype=dtype, device=device, generator=gen)
    v = torch.randn(q.shape, device=device, generator=gen).to(dtype)
    return q, k, v


MASK_KINDS = ("none", "bool", "key-padding")


def attention_mask(kind: str, batch: int, seq: int, *, device, seed: int,
                   keep: float = 0.9) -> Optional[torch.Tensor]:
    """A bool mask (True = attend) for the benchmarks, each entry kept with probability keep:
    "none" -> None, "bool" -> (seq, seq) shared by every batch element and head, "key-padding" ->
    (batch, 1, 1, seq)."""
    if kind not in MASK_KINDS:
        raise ValueError(f"mask kind must be one of {MASK_KINDS}, got {kind!r}")
    if kind == "none":
        return None
    gen = torch.Generator(device=device).manual_seed(seed)
    shape = (seq, seq) if kind == "bool" else (batch, 1, 1, seq)
    return torch.rand(shape, device=device, generator=gen) < keep


def _row_ranges(n: int, rows_per_chunk: int, tile_rows: Optional[Iterable[int]]):
    if tile_rows is None:
        return [(r0, min(n, r0 + rows_per_chunk)) for r0 in range(0, n, rows_per_chunk)]
    return [(t * TILE, min(n, (t + 1) * TILE)) for t in tile_rows]


def _scaled_scores(qf: torch.Tensor, kf: torch.Tensor, r0: int, causal: bool, alpha: float,
                   attn_mask: Optional[torch.Tensor] = None):
    """z = (alpha - 1) q k^T / sqrt(D) for the rows of qf (the first being row r0), -inf where
    causality or a bool attn_mask (broadcastable to (B, H, N, Nk), True = attend) excludes."""
    z = (qf @ kf.transpose(-1, -2)) * ((alpha - 1) / math.sqrt(qf.shape[-1]))
    if causal:
        rows = torch.arange(r0, r0 + qf.shape[-2], device=z.device)[:, None]
        cols = torch.arange(kf.shape[-2], device=z.device)
        z = z.masked_fill(cols > rows, -math.inf)
    if attn_mask is not None:
        rows = attn_mask[..., r0:r0 + qf.shape[-2], :] if attn_mask.shape[-2] > 1 else attn_mask
        z = z.masked_fill(~rows, -math.inf)
    return z


def _tile_any(mask: torch.Tensor) -> torch.Tensor:
    """(..., R, N) bool -> (..., ceil(R/TILE), ceil(N/TILE)): does the tile hold a True."""
    r, n = mask.shape[-2:]
    mask = F.pad(mask, (0, -n % TILE, 0, -r % TILE))
    mask = mask.unflatten(-2, (-1, TILE)).unflatten(-1, (-1, TILE))
    return mask.any(-1).any(-2)


def block_sparsity(q: torch.Tensor, k: torch.Tensor, *, causal: bool, alpha: float = 1.5,
                   tau: Optional[torch.Tensor] = None,
                   tile_rows: Optional[Iterable[int]] = None,
                   attn_mask: Optional[torch.Tensor] = None) -> dict:
    """Exact block sparsity of entmax attention (keys of head h are k[:, h]: no GQA).

    tau: (B, H, N) thresholds of z = (alpha - 1) s; None computes them with the exact reference.
    tile_rows: the query tile rows to visit (None: all). attn_mask: None or a bool mask
    broadcastable to (B, H, N, N) (True = attend); tiles it excludes entirely are not admissible.
    Returns the sparsity and the tile counts.
    """
    b, h, n, _ = q.shape
    kf = k.float()
    rows_per_chunk = TILE * max(1, _MAX_SCORES // (b * h * k.shape[-2] * TILE))
    dead = admissible = 0
    for r0, r1 in _row_ranges(n, rows_per_chunk, tile_rows):
        z = _scaled_scores(q[:, :, r0:r1].float(), kf, r0, causal, alpha, attn_mask)
        t = reference.threshold(z, alpha) if tau is None else tau[:, :, r0:r1, None].float()
        adm, live = _tile_any(torch.isfinite(z)), _tile_any(z > t)
        dead += int((adm & ~live).sum())
        admissible += int(adm.sum())
    return {"block_sparsity": dead / max(admissible, 1), "dead_tiles": dead,
            "admissible_tiles": admissible}


def tau_error(q: torch.Tensor, k: torch.Tensor, tau: torch.Tensor, *, causal: bool,
              alpha: float = 1.5, tile_rows: Iterable[int] = (0,)) -> float:
    """max |tau - exact reference tau| over the given query tile rows (rows with a finite tau)."""
    kf = k.float()
    worst = 0.0
    for r0, r1 in _row_ranges(q.shape[-2], TILE, tile_rows):
        z = _scaled_scores(q[:, :, r0:r1].float(), kf, r0, causal, alpha)
        ref = reference.threshold(z, alpha).squeeze(-1)
        got = tau[:, :, r0:r1].float()
        ok = torch.isfinite(ref)
        worst = max(worst, float((got - ref).abs()[ok].max()) if bool(ok.any()) else 0.0)
    return worst


def sample_tile_rows(seq: int, count: int) -> list[int]:
    """``count`` query tile rows spread evenly over the sequence (first and last included)."""
    n_tiles = -(-seq // TILE)
    return sorted({round(i * (n_tiles - 1) / max(count - 1, 1)) for i in range(count)})


def calibrate(target: float, *, heads: int, seq: int, head_dim: int, causal: bool,
              dtype: torch.dtype, device, seed: int, alpha: float = 1.5, sample_tiles: int = 48,
              iters: int = 10, tol: float = 0.01) -> dict:
    """``a`` whose inputs have a block sparsity of ``target`` or a little more (the performance
    targets are stated for "block sparsity >= target"), with the search recorded.

    ``seed`` is the inputs' seed: the head directions c are then those of the measured inputs,
    and the estimate uses one fresh batch element, all heads and ``sample_tiles`` tile rows.
    ``a`` is doubled from 4 until the estimate reaches the target (or A_MAX), then bisected
    geometrically until it lies in [target, target + tol]; the closest estimate at or above the
    target wins (the closest of all if none is). Target 0 gives a = 0 (pure noise) unsearched.
    The inputs' exact block sparsity may still differ from the estimate by about 0.01.
    """
    record = {"target": target, "a": 0.0, "estimate": None, "trace": [],
              "sample": {"batch": 1, "heads": heads, "tile_rows": sample_tiles, "seed": seed}}
    if target <= 0:
        return record
    rows = sample_tile_rows(seq, sample_tiles)

    def estimate(a: float) -> float:
        gen = torch.Generator(device=device).manual_seed(seed)
        q, k = query_key(1, heads, seq, head_dim, a, dtype=dtype, device=device, generator=gen)
        est = block_sparsity(q, k, causal=causal, alpha=alpha, tile_rows=rows)["block_sparsity"]
        record["trace"].append([a, est])
        return est

    lo, hi = 0.0, 4.0
    while (est := estimate(hi)) < target and hi < A_MAX:
        lo, hi = hi, min(2 * hi, A_MAX)
    for _ in range(iters if est >= target else 0):
        if target <= est <= target + tol:
            break
        mid = math.sqrt(lo * hi) if lo > 0 else hi / 2
        est = estimate(mid)
        lo, hi = (mid, hi) if est < target else (lo, mid)
    above = [t for t in record["trace"] if t[1] >= target]
    record["a"], record["estimate"] = min(above or record["trace"], key=lambda t: abs(t[1] - target))
    return record
