"""Threshold passes of the attention forward, counted without a GPU.

The threshold kernel's work is (passes per query block) x (tiles each pass visits), and the pass
count does not depend on the hardware: this runs the forward kernels (through Triton's interpreter
when there is no GPU) on the benchmark's inputs and prints, per alpha and input scale ``a``, the
mean and largest number of passes per query block, the block sparsity, and the largest error of
tau and of the output against the reference. Use it to judge a change to the threshold iteration
before timing it on a GPU.

    python -m benchmarks.passes                      # N = 512, alpha 1.5 / 2 / 1.3, a = 0 3 6 10
    python -m benchmarks.passes --seq 1024 --alphas 1.5 --scales 0 8
"""

from __future__ import annotations

import argparse
import os


def count_passes(seq: int, head_dim: int, heads: int, alpha: float, a: float, seed: int = 0) -> dict:
    """Threshold passes per query block of one causal forward (fp32) on ``inputs.attention_inputs``."""
    import torch

    from kernels import attention_fwd
    from lowering import reference

    from . import inputs

    q, k, v = inputs.attention_inputs(1, heads, seq, head_dim, a, dtype=torch.float32,
                                      device="cuda" if torch.cuda.is_available() else "cpu", seed=seed)
    out, tau, row_max, _, _, stats = attention_fwd.attention_forward(q, k, v, None, True, None,
                                                                     alpha, None, stats=True)
    ref_out, ref_tau, *_ = reference.attention_forward(q, k, v, None, 0.0, True, None, alpha, None, None)
    absolute_tau = tau + (alpha - 1) * row_max  # the kernels' tau is relative to (alpha - 1) row_max
    passes = stats[..., 0]
    return {
        "alpha": alpha, "a": a,
        "block_sparsity": inputs.block_sparsity(q, k, causal=True, alpha=alpha,
                                                tau=absolute_tau)["block_sparsity"],
        "mean_passes": passes.mean().item(), "max_passes": int(passes.max().item()),
        "tau_err": (tau - ref_tau).abs().max().item(), "out_err": (out - ref_out).abs().max().item(),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, default=512, help="keys and queries (causal)")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.5, 2.0, 1.3])
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 3.0, 6.0, 10.0],
                        help="input scale a (larger: more local, sparser attention)")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are first imported
    print("| alpha | a | block sparsity | passes per query block (mean / max) | tau err | out err |")
    print("|---|---|---|---|---|---|")
    for alpha in args.alphas:
        for a in args.scales:
            r = count_passes(args.seq, args.head_dim, args.heads, alpha, a)
            print(f"| {alpha:g} | {a:g} | {r['block_sparsity']:.3f} | {r['mean_passes']:.2f} / "
                  f"{r['max_passes']} | {r['tau_err']:.1e} | {r['out_err']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
