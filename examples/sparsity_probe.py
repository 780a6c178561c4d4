"""Attention sparsity of a Hugging Face model, per layer, measured while it runs entmax attention.

``SparsityProbe`` is an attention implementation that runs ``adasplash_compile.entmax_attention``
eagerly (the function the compiled model computes) and, at every call, measures the layer's
sparsity with ``adasplash_compile.attention_stats`` on the same inputs (the whole batch; no
attention weights materialised): the fraction of the weights that are exactly zero among the keys
each query may attend to (1 - support / admissible keys, over all heads and rows), and the block
sparsity: of the 64 x 64 query-key tiles with an admissible entry, the fraction the kernels skip,
known to be all zero from per-tile score bounds (at most the fraction of all-zero tiles).
"""

from __future__ import annotations

import torch

import adasplash_compile as ac
import hf_attention


@torch.no_grad()
def layer_sparsity(query, key, value, alpha, **arguments) -> dict:
    """{"zero_fraction", "block_sparsity"} of entmax_attention(query, key, value, alpha=alpha,
    **arguments) (arguments: attn_mask, is_causal, scale, enable_gqa)."""
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.detach()
    stats = ac.attention_stats(query, key, value, alpha=alpha, **arguments)
    return {"zero_fraction": 1 - stats["mean_support"] / stats["mean_keys"],
            "block_sparsity": 1 - stats["live_tile_fraction"]}


class SparsityProbe:
    """Eager entmax attention that records ``layers[layer_idx]`` = layer_sparsity at every call.
    ``alpha_of(module)`` gives the layer's alpha; ``name`` is the attention implementation."""

    def __init__(self, alpha_of: hf_attention.AlphaOf, name: str = "adasplash_sparsity_probe"):
        self.alpha_of = alpha_of
        self.layers: dict = {}
        self.name = hf_attention.register_function(name, self)

    def __call__(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        alpha = self.alpha_of(module)
        arguments = hf_attention.attention_arguments(module, query, key, attention_mask, scaling,
                                                     kwargs.get("is_causal"))
        self.layers[module.layer_idx] = layer_sparsity(query, key, value, alpha, **arguments)
        return hf_attention.entmax_attention_forward(module, query, key, value, attention_mask, scaling,
                                                     dropout, alpha=alpha, **kwargs)

    def per_layer(self, measure: str) -> list:
        """The last recorded ``measure`` ("zero_fraction" or "block_sparsity"), layer 0 first."""
        return [self.layers[i][measure] for i in sorted(self.layers)]


def plot_sparsity(ax, curves: dict) -> None:
    """Per layer, the zero fraction (solid) and block sparsity (dashed) in % against curves["step"]."""
    for layer, (zeros, blocks) in enumerate(zip(zip(*curves["zero_fraction"]), zip(*curves["block_sparsity"]))):
        color = f"C{layer + 2}"
        ax.plot(curves["step"], [100 * z for z in zeros], "o-", ms=3, color=color, label=f"layer {layer}: zero weights")
        ax.plot(curves["step"], [100 * b for b in blocks], "s--", ms=3, color=color, label=f"layer {layer}: skipped tiles")
    ax.set_ylim(-2, 102)
