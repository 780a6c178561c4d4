"""``attention_stats``: sparsity of entmax attention, against counts from the dense oracle."""

from __future__ import annotations

import math

import pytest
import torch

import adasplash_compile as ac

TILE = 64


def _tiles_any(x):
    x = torch.nn.functional.pad(x, (0, -x.shape[-1] % TILE, 0, -x.shape[-2] % TILE))
    return x.unflatten(-2, (-1, TILE)).unflatten(-1, (-1, TILE)).any(-1).any(-2)


@pytest.mark.parametrize("is_causal, masked", [(True, False), (False, True)])
def test_attention_stats_counts(oracle, is_causal, masked):
    B, H, N, D = 1, 2, 150, 16
    q, k, v = (torch.randn(B, H, N, D, dtype=torch.float64) * 2 for _ in range(3))
    mask = None
    if masked:
        mask = torch.rand(N, N) > 0.4
        mask[7] = False  # a row with no admissible key is not counted
    stats = ac.attention_stats(q, k, v, attn_mask=mask, is_causal=is_causal, alpha=1.5)
    s = oracle.scores(q, k, mask, is_causal)
    p = oracle.entmax(s, 1.5)
    rows = torch.isfinite(s).any(-1)
    assert stats["mean_support"] == pytest.approx((p > 0).sum(-1)[rows].double().mean().item())
    assert stats["mean_keys"] == pytest.approx(torch.isfinite(s).sum(-1)[rows].double().mean().item())
    admissible = _tiles_any(torch.isfinite(s))
    exact_live = (_tiles_any(p > 0) & admissible).sum() / admissible.sum()
    assert exact_live.item() <= stats["live_tile_fraction"] <= 1.0
    assert stats["threshold_passes"] is None or stats["threshold_passes"] >= 1


def test_attention_stats_through_the_kernels(oracle, monkeypatch):
    """On the kernels' path (the interpreter without a GPU) the table holds -inf on admissible
    tiles found to hold no weight: the admissible tiles come from the mask, and the visited share
    is exact on these small shapes (every tile is visited once the threshold is known)."""
    from lowering import routing

    monkeypatch.setattr(routing, "use_triton_attention", lambda *args: True)
    B, H, N, D = 1, 2, 200, 16
    q, k, v = (torch.randn(B, H, N, D) * 2 for _ in range(3))
    stats = ac.attention_stats(q, k, v, is_causal=True, alpha=1.5)
    s = oracle.scores(q.double(), k.double(), None, True)
    admissible = _tiles_any(torch.isfinite(s))
    exact_live = (_tiles_any(oracle.entmax(s, 1.5) > 0) & admissible).sum() / admissible.sum()
    assert stats["live_tile_fraction"] == pytest.approx(exact_live.item(), abs=1e-6)
    assert stats["threshold_passes"] >= 1


def test_attention_stats_rejects_bad_input():
    q = torch.randn(1, 2, 8, 4)
    with pytest.raises(ValueError, match="alpha"):
        ac.attention_stats(q, q, q, alpha=0.5)
