"""Entmax attention as a Hugging Face attention implementation, with a per-module alpha.

``register(name, alpha_of)`` makes ``attn_implementation=name`` run
``adasplash_compile.entmax_attention`` with ``alpha = alpha_of(module)`` (a float, or one value per
query head that may require grad) in place of the model's attention. Masks are SDPA's: None for
plain causal attention (then ``is_causal``), else boolean (True = attend) with padding included.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

import adasplash_compile as ac

Alpha = Union[float, torch.Tensor]
AlphaOf = Callable[[torch.nn.Module], Alpha]


def attention_arguments(module, query, key, attention_mask, scaling: Optional[float],
                        is_causal: Optional[bool] = None) -> dict:
    """The mask, causality, scale and GQA arguments of ``entmax_attention`` for a Hugging Face
    attention call, decided as Hugging Face's SDPA attention decides them."""
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    if attention_mask is not None:
        attention_mask = attention_mask[:, :, :, : key.shape[-2]]
    return dict(attn_mask=attention_mask, is_causal=bool(is_causal and attention_mask is None and query.shape[2] > 1),
                scale=scaling, enable_gqa=key.shape[1] != query.shape[1])


def entmax_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, *,
                             alpha: Alpha, is_causal: Optional[bool] = None, **kwargs):
    """(B, H, N, D) inputs, (B, N, H, D) output and no weights, as an ``AttentionInterface`` function."""
    for name in ("softcap", "s_aux"):
        if kwargs.get(name) is not None:
            raise ValueError(f"entmax attention does not support {name} (got {name}={kwargs[name]!r})")
    arguments = attention_arguments(module, query, key, attention_mask, scaling, is_causal)
    out = ac.entmax_attention(query, key, value, dropout_p=dropout, alpha=alpha, **arguments)
    return out.transpose(1, 2).contiguous(), None


def register_function(name: str, function) -> str:
    """Register an ``AttentionInterface`` function under ``name`` with SDPA's masks; the name."""
    AttentionInterface.register(name, function)
    AttentionMaskInterface.register(name, sdpa_mask)
    return name


def register(name: str, alpha_of: AlphaOf) -> str:
    """Register entmax attention with alpha ``alpha_of(module)`` under ``name``; the name."""

    def forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        return entmax_attention_forward(module, query, key, value, attention_mask, scaling, dropout,
                                        alpha=alpha_of(module), **kwargs)

    return register_function(name, forward)
