"""Module-level attention that Dynamo keeps as one graph node, run as entmax attention.

``nn.MultiheadAttention`` reaches the graph as one ``F.multi_head_attention_forward`` call, and
``nn.TransformerEncoderLayer`` in inference (eval, no grad) as one fused
``torch._transformer_encoder_layer_fwd`` call. The pass replaces such a node by the functions
below: they run PyTorch's own ``F.multi_head_attention_forward`` with ``need_weights=False`` (its
SDPA path), as a copy whose global ``scaled_dot_product_attention`` is ``entmax_sdpa`` (a
``TorchFunctionMode`` cannot do it: inside a mode's handler for the outer function the mode is
off, so the inner SDPA call would not reach it).
"""

from __future__ import annotations

import types
from functools import partial
from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from .functional import attention_op


def entmax_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                enable_gqa=False, *, alpha: float = 1.5, head_alpha: Optional[Tensor] = None):
    """``F.scaled_dot_product_attention``'s arguments, computed as entmax attention."""
    return attention_op(query, key, value, attn_mask, dropout_p, is_causal, scale,
                        alpha if head_alpha is None else head_alpha)


def _with_sdpa(fn, sdpa):
    """A copy of the torch function ``fn`` that calls ``sdpa`` as its scaled_dot_product_attention.

    The copy also names itself under ``fn``'s name, so that its ``handle_torch_function`` (taken
    when a torch function mode is active, as while tracing) dispatches back to the copy.
    """
    scope = dict(fn.__globals__, scaled_dot_product_attention=sdpa)
    copy = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    scope[fn.__name__] = copy
    return copy


def sdpa_by_name() -> bool:
    """Whether F.multi_head_attention_forward calls the global scaled_dot_product_attention."""
    return "scaled_dot_product_attention" in F.multi_head_attention_forward.__code__.co_names


def multi_head_attention(*args, alpha: float, head_alpha: Optional[Tensor] = None, **kwargs):
    """``F.multi_head_attention_forward(*args, **kwargs)`` with entmax attention (no weights)."""
    kwargs["need_weights"] = False
    sdpa = partial(entmax_sdpa, alpha=alpha, head_alpha=head_alpha)
    return _with_sdpa(F.multi_head_attention_forward, sdpa)(*args, **kwargs)


def encoder_layer(src, embed_dim, num_heads, in_proj_weight, in_proj_bias, out_proj_weight,
                  out_proj_bias, use_gelu, norm_first, eps, norm1_weight, norm1_bias, norm2_weight,
                  norm2_bias, linear1_weight, linear1_bias, linear2_weight, linear2_bias, mask,
                  mask_type, *, alpha: float, head_alpha: Optional[Tensor] = None):
    """``torch._transformer_encoder_layer_fwd`` (batch-first, inference) with entmax attention.

    The unfused layer of ``nn.TransformerEncoderLayer``: x + SA(x) and x + FF(x), each followed by
    (post-norm) or applied to (pre-norm) a layer norm; FF(x) = W2 act(W1 x), act = gelu or relu.
    ``mask`` is ``MultiheadAttention.merge_masks``' output: a key padding mask (mask_type 1) or an
    attention mask of shape (B, H, L, L) (mask_type 2).
    """
    B, L, _ = src.shape
    key_padding_mask = mask if mask_type == 1 else None
    attn_mask = mask.reshape(B * num_heads, L, L) if mask_type == 2 else None

    def attention(x):
        x = x.transpose(0, 1)
        out = multi_head_attention(
            x, x, x, embed_dim, num_heads, in_proj_weight, in_proj_bias, None, None, False, 0.0,
            out_proj_weight, out_proj_bias, training=False, key_padding_mask=key_padding_mask,
            attn_mask=attn_mask, alpha=alpha, head_alpha=head_alpha)[0]
        return out.transpose(0, 1)

    def feed_forward(x):
        act = F.gelu if use_gelu else F.relu
        return F.linear(act(F.linear(x, linear1_weight, linear1_bias)), linear2_weight, linear2_bias)

    def norm1(x):
        return F.layer_norm(x, (embed_dim,), norm1_weight, norm1_bias, eps)

    def norm2(x):
        return F.layer_norm(x, (embed_dim,), norm2_weight, norm2_bias, eps)

    x = src
    if norm_first:
        x = x + attention(norm1(x))
        return x + feed_forward(norm2(x))
    x = norm1(x + attention(x))
    return norm2(x + feed_forward(x))
