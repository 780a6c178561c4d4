"""Quickstart: sparse alpha-entmax attention for an unmodified Hugging Face model.

    pip install -e ".[examples]" && python examples/quickstart.py

Builds a small random-weight Llama on the default device (CUDA if present, else CPU), compiles it
with ``backend=adasplash_compile.backend``, prints what the pass rewrote, runs forward and
backward, and compares with the same model run eagerly with ``adasplash_compile.entmax_attention``
as its attention. The sparsity is counted on the eager entmax model: every layer's attention
weights are materialised (``adasplash_compile.entmax`` on the scores) and their exact zeros counted
among the keys each query may attend to.
"""

from __future__ import annotations

import argparse
import copy

import torch
import transformers
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

import adasplash_compile as ac
from adasplash_compile import huggingface


def build_model(device: str, dtype: torch.dtype, small: bool):
    hidden, layers, heads = (64, 2, 4) if small else (512, 4, 8)
    config = transformers.LlamaConfig(
        vocab_size=1024, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads // 2, max_position_embeddings=4096,
        initializer_range=0.1)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM._from_config(config, attn_implementation="sdpa")
    return model.to(device=device, dtype=dtype)


def with_attention(model, implementation: str):
    """The same weights with another attention implementation."""
    config = copy.deepcopy(model.config)
    other = type(model)._from_config(config, attn_implementation=implementation)
    other.load_state_dict(model.state_dict())
    return other.to(device=model.device, dtype=model.dtype)


def register_sparsity_probe(alpha: float, counts: list) -> str:
    """Eager entmax attention that also counts the exact zeros of each layer's weights."""

    def probe(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        k = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
        mask = attention_mask[:, :, :, : k.shape[-2]].float()
        scores = (query.float() @ k.float().transpose(-2, -1)) * scaling + mask
        weights = ac.entmax(scores, alpha=alpha)
        admissible = (mask == 0).expand_as(weights)
        counts.append(((weights == 0) & admissible).sum().item() / admissible.sum().item())
        return huggingface.attention_forward(module, query, key, value, attention_mask, scaling,
                                             dropout, alpha=alpha, **kwargs)

    AttentionInterface.register("adasplash_probe", probe)
    AttentionMaskInterface.register("adasplash_probe", eager_mask)
    return "adasplash_probe"


def forward_backward(model, ids):
    model.zero_grad()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = torch.cat([p.grad.float().flatten() for p in model.parameters()])
    return out.logits.detach().float(), grads


def relative(a, b) -> float:
    """||a - b|| / ||b||."""
    return ((a - b).norm() / b.norm()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alpha", type=float, default=1.5)
    parser.add_argument("--seq-len", type=int, default=None)
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    small = device == "cpu"
    seq_len = args.seq_len or (64 if small else 1024)
    model = build_model(device, dtype, small)
    ids = torch.randint(0, model.config.vocab_size, (2, seq_len), device=device)
    print(f"Llama, {model.config.num_hidden_layers} layers, {model.config.num_attention_heads} heads, "
          f"sequence {seq_len}, {dtype}, on {device}\n")

    backend = ac.Backend(alpha=args.alpha)
    print(backend.explain(model, input_ids=ids), "\n")

    compiled = torch.compile(model, backend=backend)
    logits, grads = forward_backward(compiled, ids)

    counts: list = []
    eager = with_attention(model, register_sparsity_probe(args.alpha, counts))
    ref_logits, ref_grads = forward_backward(eager, ids)
    soft_logits, _ = forward_backward(with_attention(model, "sdpa"), ids)

    print(f"attention sparsity: {100 * sum(counts) / len(counts):.1f}% of the admissible attention "
          f"weights are exactly zero (eager entmax model, materialised weights, mean over layers)")
    print(f"compiled vs eager entmax model: relative difference {relative(logits, ref_logits):.1e} "
          f"(logits), {relative(grads, ref_grads):.1e} (gradients)")
    print(f"compiled vs softmax model:      relative difference {relative(logits, soft_logits):.1e} "
          f"(logits)")


if __name__ == "__main__":
    main()
