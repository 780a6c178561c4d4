"""Sparsity statistics of one entmax-attention call, for inspection (never on the hot path)."""

from __future__ import annotations

import torch

from kernels.attention_bwd import live_blocks

from . import reference, routing
from .layout import TILE


def attention_stats(q, k, v, attn_mask=None, is_causal=False, scale=None, alpha=1.5,
                    head_alpha=None) -> dict:
    """Runs the forward once and reports, over all heads and rows:

    - ``live_tile_fraction``: of the TILE x TILE (query, key) tiles with an admissible entry, the
      fraction the kernels visit after the threshold is known (from the saved tile table);
    - ``mean_support``: the mean number of keys with nonzero weight per query row that has one;
    - ``mean_keys``: the mean number of admissible keys of those rows;
    - ``threshold_passes``: on CUDA, the mean number of threshold passes per query block
      (None on the reference path).
    """
    args = (q, k, v, attn_mask, 0.0, is_causal, scale, alpha, head_alpha, None)
    passes = None
    with torch.no_grad():
        if routing.use_triton_attention(*args):
            from kernels import attention_fwd

            _, tau, row_max, tile_max, _, per_block = attention_fwd.attention_forward(
                q, k, v, attn_mask, is_causal, scale, alpha, head_alpha, stats=True)
            passes = per_block[..., 0].float().mean().item()
        else:
            _, tau, row_max, tile_max, _ = reference.attention_forward(*args)
        # the table itself cannot say which tiles are admissible: the kernels store -inf on
        # admissible tiles found to hold no weight
        admissible = _admissible_tiles(q, k, attn_mask, is_causal)
        live = live_blocks(tau, tile_max, alpha, head_alpha, TILE, TILE) & admissible
        support = reference.support_size(q, k, tau, row_max, attn_mask, is_causal, scale, alpha,
                                         head_alpha)
        rows = torch.isfinite(row_max)
        keys = _admissible_keys(q, k, attn_mask, is_causal)
    n_rows = max(int(rows.sum()), 1)
    return {
        "live_tile_fraction": live.sum().item() / max(int(admissible.sum()), 1),
        "mean_support": support[rows].sum().item() / n_rows,
        "mean_keys": keys[rows].sum().item() / n_rows,
        "threshold_passes": passes,
    }


def _keep(q, k, attn_mask, is_causal) -> torch.Tensor:
    """Keys not excluded by the mask or causality: bool, (Nq, Nk) or the mask's broadcast shape
    (not expanded over batch and heads)."""
    keep = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device)
    if is_causal:
        keep = keep.tril()
    if attn_mask is not None:
        excluded = ~attn_mask if attn_mask.dtype == torch.bool else torch.isneginf(attn_mask)
        keep = keep & ~excluded
    return keep


def _admissible_keys(q, k, attn_mask, is_causal) -> torch.Tensor:
    """(B, Hq, Nq) count of keys not excluded by the mask or causality."""
    return _keep(q, k, attn_mask, is_causal).sum(-1).expand(q.shape[:3])


def _admissible_tiles(q, k, attn_mask, is_causal) -> torch.Tensor:
    """(B, Hq, ceil(Nq/TILE), ceil(Nk/TILE)) bool: tiles with some admissible entry."""
    keep = _keep(q, k, attn_mask, is_causal)
    keep = torch.nn.functional.pad(keep, (0, -keep.shape[-1] % TILE, 0, -keep.shape[-2] % TILE))
    tiles = keep.unflatten(-1, (-1, TILE)).unflatten(-3, (-1, TILE)).any(-1).any(-2)
    return tiles.expand(*q.shape[:2], *tiles.shape[-2:])
