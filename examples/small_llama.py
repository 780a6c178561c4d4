"""A small random-weight Hugging Face Llama for the training examples (no downloads)."""

from __future__ import annotations

import argparse
import copy

import torch
import transformers


def small_llama(vocab_size: int, seq_len: int, hidden: int, layers: int, heads: int, seed: int,
                attn_implementation: str = "sdpa") -> transformers.LlamaForCausalLM:
    """A ``LlamaForCausalLM`` with ``layers`` layers of width ``hidden``, ``heads`` query heads
    (half as many key-value heads: grouped-query attention), initialised from ``seed``."""
    if hidden % heads or heads % 2:
        raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads}), heads even")
    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=4 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads // 2,
        max_position_embeddings=seq_len, initializer_range=0.02, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM._from_config(config, attn_implementation=attn_implementation)


def with_attention(model, attn_implementation: str):
    """A copy of ``model`` (same weights, device and dtype) using another attention implementation."""
    other = type(model)._from_config(copy.deepcopy(model.config), attn_implementation=attn_implementation)
    other.load_state_dict(model.state_dict())
    return other.to(device=model.device, dtype=model.dtype)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The model's command-line options (default None: the example fills them in)."""
    group = parser.add_argument_group("model")
    group.add_argument("--hidden", type=int, help="model width")
    group.add_argument("--layers", type=int, help="decoder layers")
    group.add_argument("--heads", type=int, help="query heads (key-value heads: half as many)")
