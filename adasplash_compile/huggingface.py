"""Eager entmax attention for Hugging Face models, through their ``AttentionInterface``.

    name = adasplash_compile.huggingface.register(alpha=1.5)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=name)

gives the model ``adasplash_compile.entmax_attention`` in place of its attention, run eagerly:
the model that ``torch.compile(model, backend=adasplash_compile.backend)`` computes, without
compiling. The mask is Hugging Face's additive "eager" mask (causality and padding included).
"""

from __future__ import annotations

from functools import partial

from .checks import check_alpha
from .functional import entmax_attention


def attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, *,
                      alpha: float = 1.5, **kwargs):
    """An ``AttentionInterface`` function: (B, H, N, D) inputs, (B, N, H, D) output, no weights."""
    for name in ("softcap", "s_aux"):
        if kwargs.get(name) is not None:
            raise ValueError(f"entmax attention does not support {name} (got {name}={kwargs[name]!r})")
    mask = None if attention_mask is None else attention_mask[:, :, :, : key.shape[-2]]
    out = entmax_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling,
                           alpha=alpha, enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2).contiguous(), None


def register(alpha: float = 1.5, name: str = "adasplash_entmax") -> str:
    """Register entmax attention with ``alpha`` under ``name``; returns the name."""
    check_alpha(alpha)
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(name, partial(attention_forward, alpha=float(alpha)))
    AttentionMaskInterface.register(name, eager_mask)
    return name
