"""Wall time of one forward + backward call, eager and under CUDA graphs, on a GPU.

Small attention calls spend part of their time on the host (the custom op's dispatch and
autograd, one launch per Triton kernel). This times, per call and including the host,
``adasplash_compile.entmax_attention`` and flash SDPA, both eagerly and compiled with
``torch.compile(mode="reduce-overhead")`` (CUDA graphs replay every launch of a call at once),
on ``inputs.attention_inputs`` (causal, bf16).

    python -m benchmarks.host_overhead                                  # 4k x 4 and 16k x 1 points
    python -m benchmarks.host_overhead --points 4096:4:32 --json ho.json    # seq:batch:a
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import inputs
from .timing import save_rows, table_row

# seq, batch, input scale a: the quick preset's calibrated points for block sparsity 0.9 and 0.95
DEFAULT_POINTS = ((4096, 4, 13.45), (4096, 4, 32.0), (16384, 1, 12.34))


def _ours(q, k, v):
    import adasplash_compile as ac

    return ac.entmax_attention(q, k, v, is_causal=True)


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def wall_ms(fn, q, k, v, grad_out, graphs: bool, reps: int) -> float:
    """Mean wall milliseconds of fn(q, k, v).backward(grad_out), after 5 warm-up calls."""
    def call():
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        for t in (q, k, v):
            t.grad = None
        fn(q, k, v).backward(grad_out)

    for _ in range(5):
        call()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        call()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps * 1e3


def measure(seq: int, batch: int, a: float, heads: int, head_dim: int, reps: int) -> dict:
    q, k, v = inputs.attention_inputs(batch, heads, seq, head_dim, a, dtype=torch.bfloat16,
                                      device="cuda", seed=0)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    grad_out = torch.randn_like(q)
    ms = {}
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        for name, fn in (("ours", _ours), ("sdpa", _sdpa)):
            ms[f"{name} eager"] = wall_ms(fn, q, k, v, grad_out, False, reps)
            torch._dynamo.reset()
            compiled = torch.compile(fn, mode="reduce-overhead")
            ms[f"{name} reduce-overhead"] = wall_ms(compiled, q, k, v, grad_out, True, reps)
    sparsity = inputs.block_sparsity(q.detach(), k.detach(), causal=True, alpha=1.5)
    return {"seq": seq, "batch": batch, "a": a, "block_sparsity": sparsity["block_sparsity"],
            "ms": ms}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", nargs="+",
                        default=[f"{s}:{b}:{a}" for s, b, a in DEFAULT_POINTS],
                        help="seq:batch:a, a the input scale (larger: sparser)")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("host_overhead needs a CUDA device (it times CUDA graphs)")
    rows = []
    print("causal bf16 alpha 1.5, H={} D={}; wall ms per forward + backward".format(
        args.heads, args.head_dim))
    print("| N | B | block sparsity | ours eager | ours reduce-overhead | SDPA eager | "
          "SDPA reduce-overhead | ours / SDPA eager | ours / SDPA reduce-overhead |")
    print("|---" * 9 + "|")
    for point in args.points:
        seq, batch, a = point.split(":")
        row = measure(int(seq), int(batch), float(a), args.heads, args.head_dim, args.reps)
        rows.append(row)
        ms = row["ms"]
        cells = [f"{row['seq']}", f"{row['batch']}", f"{row['block_sparsity']:.3f}"]
        cells += [f"{ms[name]:.3f}" for name in ("ours eager", "ours reduce-overhead", "sdpa eager",
                                                  "sdpa reduce-overhead")]
        cells += [f"{ms['ours eager'] / ms['sdpa eager']:.2f}",
                  f"{ms['ours reduce-overhead'] / ms['sdpa reduce-overhead']:.2f}"]
        print(table_row(cells), flush=True)
    if args.json:
        save_rows(args.json, args, rows)


if __name__ == "__main__":
    main()
