"""Attention sparsity of a Hugging Face model: the fraction of exactly-zero entmax weights per layer.

``SparsityProbe`` is an attention implementation (``AttentionInterface``) that runs
``adasplash_compile.entmax_attention`` eagerly, as the compiled model computes it, and on the way
materialises one sequence's attention weights: ``adasplash_compile.entmax`` of
scale * q k^T + mask, with the layer's alpha. It records, per layer, the fraction of the weights
that are exactly zero among the keys each query may attend to (the mask's zeros: causal, padding).
"""

from __future__ import annotations

from typing import Callable, Union

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

import adasplash_compile as ac
from adasplash_compile import huggingface

Alpha = Union[float, torch.Tensor]


@torch.no_grad()
def zero_fraction(query, key, mask, scale: float, alpha: Alpha) -> float:
    """Fraction of exact zeros among the admissible entries of entmax_alpha(scale * q k^T + mask).

    query (B, Hq, N, D), key (B, Hkv, Nk, D) with Hq a multiple of Hkv, mask an additive float
    mask broadcastable to (B, Hq, N, Nk) (0 where attending is allowed) or None; alpha a float or
    one per query head (Hq,).
    """
    key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
    scores = scale * query.float() @ key.float().transpose(-2, -1)
    admissible = torch.ones_like(scores, dtype=torch.bool)
    if mask is not None:
        scores = scores + mask.float()
        admissible = admissible & (mask == 0)
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.detach().float().reshape(-1, 1)
    weights = ac.entmax(scores, alpha=alpha)
    return ((weights == 0) & admissible).sum().item() / admissible.sum().item()


class SparsityProbe:
    """Eager entmax attention recording ``fractions[layer_idx]`` (zero_fraction of the first
    sequence of the batch) at every call. ``alpha_of(module)`` gives the layer's alpha."""

    def __init__(self, alpha_of: Callable[[torch.nn.Module], Alpha], name: str = "adasplash_sparsity_probe"):
        self.alpha_of, self.name = alpha_of, name
        self.fractions: dict = {}
        AttentionInterface.register(name, self)
        AttentionMaskInterface.register(name, eager_mask)

    def __call__(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        alpha = self.alpha_of(module)
        mask = None if attention_mask is None else attention_mask[:1, :, :, : key.shape[-2]]
        scale = query.shape[-1] ** -0.5 if scaling is None else scaling
        self.fractions[module.layer_idx] = zero_fraction(query[:1], key[:1], mask, scale, alpha)
        return huggingface.attention_forward(module, query, key, value, attention_mask, scaling, dropout,
                                             alpha=alpha, **kwargs)

    def per_layer(self) -> list:
        """The recorded fractions, layer 0 first."""
        return [self.fractions[i] for i in sorted(self.fractions)]
