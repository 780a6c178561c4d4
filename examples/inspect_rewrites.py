"""What the adasplash pass rewrites in Hugging Face models, and what it leaves alone and why.

    python examples/inspect_rewrites.py                      # every architecture below
    python examples/inspect_rewrites.py --models llama,bert --dump graphs/

For each tiny random-weight model (no downloads), ``adasplash_compile.Backend(alpha).explain``
runs one forward pass under torch.compile with the pass (no Inductor) and reports every attention
site. Printed per model: the report's table; the rewritten sites and the left-alone ones with
their reasons; and one layer of the graph: for a rewritten site, the lines of the FX graph the
pass replaced and the ``adasplash.entmax_attention`` call it put in their place (a unified diff of
the graph before and after); for a left-alone site, the graph lines around its softmax.
``--dump DIR`` also writes every graph before and after the rewrite, and its site table, to
DIR/<model>/.

Models: Llama and Qwen2 (SDPA attention), Qwen3 and GPT-2 (their eager matmul-softmax attention),
BERT with a padding mask (SDPA), and two left alone: Llama asked for its attention weights
(``output_attentions=True``: the weights are returned, so softmax must stay) and Gemma2 (tanh
soft-capping of the scores, which entmax attention has no equivalent for).
"""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import transformers

import adasplash_compile as ac

VOCAB, HIDDEN, LAYERS, HEADS, SEQ = 128, 32, 2, 4, 16


class Example(NamedTuple):
    """A model and the keyword arguments of one forward pass."""

    model: torch.nn.Module
    inputs: dict


def _common() -> dict:
    return dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
                num_hidden_layers=LAYERS, num_attention_heads=HEADS, max_position_embeddings=64)


def _decoder(config_cls, model_cls, attn: str, **extra) -> Example:
    config = config_cls(num_key_value_heads=HEADS // 2, head_dim=HIDDEN // HEADS, **_common())
    model = model_cls._from_config(config, attn_implementation=attn).eval()
    return Example(model, dict(input_ids=torch.randint(0, VOCAB, (2, SEQ)), **extra))


def llama() -> Example:
    return _decoder(transformers.LlamaConfig, transformers.LlamaForCausalLM, "sdpa")


def qwen2() -> Example:
    return _decoder(transformers.Qwen2Config, transformers.Qwen2ForCausalLM, "sdpa")


def qwen3() -> Example:
    return _decoder(transformers.Qwen3Config, transformers.Qwen3ForCausalLM, "eager")


def gpt2() -> Example:
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                                     n_positions=64, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel._from_config(config, attn_implementation="eager").eval()
    return Example(model, dict(input_ids=torch.randint(0, VOCAB, (2, SEQ))))


def bert_with_padding() -> Example:
    """The second sequence is padded after 11 tokens (attention_mask 0 there)."""
    model = transformers.BertModel._from_config(transformers.BertConfig(**_common()),
                                                attn_implementation="sdpa").eval()
    mask = torch.ones(2, SEQ, dtype=torch.long)
    mask[1, 11:] = 0
    return Example(model, dict(input_ids=torch.randint(0, VOCAB, (2, SEQ)), attention_mask=mask))


def llama_returning_weights() -> Example:
    return _decoder(transformers.LlamaConfig, transformers.LlamaForCausalLM, "eager",
                    output_attentions=True)


def gemma2_soft_capping() -> Example:
    return _decoder(transformers.Gemma2Config, transformers.Gemma2ForCausalLM, "eager")


ARCHITECTURES: dict = {
    "llama": llama,
    "qwen2": qwen2,
    "qwen3": qwen3,
    "gpt2": gpt2,
    "bert": bert_with_padding,
    "llama-output-attentions": llama_returning_weights,
    "gemma2-softcap": gemma2_soft_capping,
}


def _defines(line: str, node: str) -> bool:
    """Whether an FX code line assigns the node named ``node``."""
    text = line.lstrip("+- ").strip()
    return text.startswith(f"{node}:") or text.startswith(f"{node} =")


def site_excerpt(graph: "ac.report.GraphReport", site: ac.Site, context: int = 2) -> str:
    """The part of ``graph`` that shows ``site``: the diff hunk replacing it when rewritten,
    else ``context`` lines of the graph before the rewrite around the line defining the site."""
    before, after = graph.before.splitlines(), graph.after.splitlines()
    if site.rewritten:
        diff = list(difflib.unified_diff(before, after, "before", "after", n=context, lineterm=""))
        hunks, current = [], None
        for line in diff[2:]:
            if line.startswith("@@"):
                current = [line]
                hunks.append(current)
            elif current is not None:
                current.append(line)
        for hunk in hunks:
            if any(line.startswith("-") and _defines(line, site.node) for line in hunk):
                return "\n".join(hunk)
        return f"(no diff hunk removes the node {site.node!r})"
    for i, line in enumerate(before):
        if _defines(line, site.node):
            return "\n".join(before[max(0, i - 2 * context): i + context + 1])
    return f"(node {site.node!r} not found in the graph)"


def describe(name: str, report) -> str:
    """The table, the rewritten and left-alone sites, and one layer's graph excerpt."""
    lines = [f"=== {name} ===", str(report), ""]
    for site in report.rewritten:
        lines.append(f"rewritten:   {site.module} ({site.pattern}, mask {site.mask}, alpha {site.alpha})")
    for site in report.left_alone:
        lines.append(f"left alone:  {site.module} ({site.pattern}): {site.reason}")
    first = (report.rewritten or report.left_alone)[0]
    graph = next(g for g in report.graphs if first in g.sites)
    kind = "rewritten: the diff of the graph" if first.rewritten else "left alone: the graph around it"
    lines += ["", f"--- {first.module}, {kind} ---", site_excerpt(graph, first), ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="models: " + ", ".join(ARCHITECTURES))
    parser.add_argument("--models", default=",".join(ARCHITECTURES),
                        help="comma-separated names from the list below (default: all)")
    parser.add_argument("--alpha", type=float, default=1.5, help="entmax alpha of the rewritten sites")
    parser.add_argument("--dump", metavar="DIR", help="write each model's graphs to DIR/<model>/")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in ARCHITECTURES]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {list(ARCHITECTURES)}")

    reports = {}
    for name in names:
        torch.manual_seed(0)
        example: Example = ARCHITECTURES[name]()
        dump = Path(args.dump) / name if args.dump else None
        torch._dynamo.reset()  # each model compiled afresh: one report per model
        reports[name] = ac.Backend(alpha=args.alpha, dump_dir=dump).explain(example.model, **example.inputs)
        print(describe(name, reports[name]))
        if dump is not None:
            print(f"graphs written to {dump}/\n")
    return reports


if __name__ == "__main__":
    main()
