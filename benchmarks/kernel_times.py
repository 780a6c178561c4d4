"""Where the attention time goes: device time per Triton kernel, next to SDPA, on a GPU.

For each input scale ``a`` (``inputs.attention_inputs``; larger is sparser) this runs the forward
and the backward launch helpers of ``kernels`` directly (no autograd, no compile) under the torch
profiler and prints, per kernel, its mean device time per call, with the threshold passes per query
block, the fraction of live tiles of the output pass and the block sparsity measured on the same
inputs. The forward keeps the backward's u_shift (as a training step does) unless
``--forward-only``. Use it to see which kernel a change should speed up, and to compare two
versions of the kernels on the same warm machine (run it once per checkout, same arguments).

    python -m benchmarks.kernel_times                         # causal, N = 16k, B = 1, H = 16, D = 128
    python -m benchmarks.kernel_times --scales 0 10.8 --json times.json
    python -m benchmarks.kernel_times --alpha 2 --forward-only  # another alpha, forward kernels
    python -m benchmarks.kernel_times --forward-only --set threshold:MAX_STEPS=1 \
        --set max:num_stages=3                                  # launch options of one kernel
    python -m benchmarks.kernel_times --forward-only --mask bool  # a (N, N) bool mask, 90% kept

``--set KERNEL:NAME=VALUE`` changes a launch argument of one kernel (its name without
``adasplash_attention_``): a constexpr such as MAX_STEPS, or num_warps / num_stages; not one the
grid depends on (BLOCK_M). A capped MAX_STEPS times the threshold kernel's first passes (its tau,
and so the output pass's work, are then wrong).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
import torch.nn.functional as F

from . import inputs
from .timing import save_rows, table_row

# the input scales the quick benchmark calibrated for block sparsity 0, .5, .75, .9, .95 at N = 16k
DEFAULT_SCALES = (0.0, 8.0, 9.31, 10.83, 12.34)


def _device_ms(fn, reps: int) -> dict[str, float]:
    """Mean device milliseconds per call of ``fn``, per kernel name (after one warm-up call)."""
    fn()
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    totals: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            totals[event.name] += event.time_range.elapsed_us() / 1000 / reps
    return dict(totals)


def _short(name: str) -> str:
    """Our kernels by their names; anything else (SDPA's flash kernels, copies) by a kind."""
    if name.startswith("adasplash_"):
        return name.removeprefix("adasplash_attention_")
    return "sdpa" if "flash" in name or "fmha" in name else "other"


def parse_setting(text: str) -> tuple[str, str, object]:
    """("threshold", "MAX_STEPS", 1) from "threshold:MAX_STEPS=1" (ints, floats, True / False)."""
    kernel, sep, assignment = text.partition(":")
    name, eq, value = assignment.partition("=")
    if not (sep and eq and kernel and name and value):
        raise ValueError(f"--set takes KERNEL:NAME=VALUE, got {text!r}")
    for kind in (int, float):
        try:
            return kernel, name, kind(value)
        except ValueError:
            pass
    return kernel, name, {"True": True, "False": False}.get(value, value)


def launch_with(settings: list[tuple[str, str, object]]):
    """A launch wrapper for the launch helpers of ``kernels`` that sets, per kernel (named
    without ``adasplash_attention_``), the given launch arguments."""
    def launch(kernel):
        short = kernel.fn.__name__.removeprefix("adasplash_attention_")
        extra = {name: value for kernel_name, name, value in settings if kernel_name == short}
        if not extra:
            return kernel

        class Grid:
            def __getitem__(self, grid):
                return lambda *args, **kwargs: kernel[grid](*args, **{**kwargs, **extra})
        return Grid()
    return launch


def measure(seq: int, batch: int, heads: int, head_dim: int, a: float, reps: int, seed: int,
            alpha: float = 1.5, backward: bool = True, settings=(), mask: str = "none") -> dict:
    from kernels import attention_bwd, attention_fwd

    q, k, v = inputs.attention_inputs(batch, heads, seq, head_dim, a, dtype=torch.bfloat16,
                                      device="cuda", seed=seed)
    attn_mask = inputs.attention_mask(mask, batch, seq, device="cuda", seed=seed + 1)
    dout = torch.randn_like(q)
    launch = launch_with(list(settings))
    out, tau, row_max, tile_max, u_shift, stats = attention_fwd.attention_forward(
        q, k, v, attn_mask, True, None, alpha, None, for_backward=backward, stats=True,
        launch=launch)
    absolute_tau = tau + (alpha - 1) * row_max
    sparsity = inputs.block_sparsity(q, k, causal=True, alpha=alpha, tau=absolute_tau,
                                     attn_mask=attn_mask)

    def forward():  # with what a training step keeps for the backward, unless forward-only
        attention_fwd.attention_forward(q, k, v, attn_mask, True, None, alpha, None,
                                        for_backward=backward, launch=launch)

    def backward_pass():
        attention_bwd.attention_backward(dout, q, k, v, tau, row_max, tile_max, attn_mask, True,
                                         None, alpha, out=out, u_shift=u_shift)

    # SDPA takes a mask or is_causal, not both: with a mask, the causal one folded into it (it
    # then runs its memory-efficient kernels, not flash attention)
    sdpa_mask = (None if attn_mask is None else
                 attn_mask & torch.ones(seq, seq, dtype=torch.bool, device="cuda").tril())

    def sdpa_fwd():
        F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask, is_causal=sdpa_mask is None)

    times: dict[str, float] = defaultdict(float)
    parts = [("fwd", forward), ("sdpa_fwd", sdpa_fwd)]
    if backward:
        parts.append(("bwd", backward_pass))
    for part, fn in parts:
        for name, ms in _device_ms(fn, reps).items():
            times[f"{part}:{_short(name)}"] += ms
    return {
        "a": a, "mask": mask, "block_sparsity": sparsity["block_sparsity"],
        "passes": stats[..., 0].mean().item(),
        "live_fraction": (stats[..., 1].sum() / stats[..., 2].sum()).item(),
        "ms": dict(sorted(times.items())),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, default=16384)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--scales", type=float, nargs="+", default=list(DEFAULT_SCALES))
    parser.add_argument("--alpha", type=float, default=1.5)
    parser.add_argument("--forward-only", action="store_true", help="skip the backward kernels")
    parser.add_argument("--mask", choices=inputs.MASK_KINDS, default="none",
                        help="a bool mask, 90%% of entries kept: (N, N), or key padding (B, 1, 1, N)")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--set", action="append", default=[], type=parse_setting,
                        metavar="KERNEL:NAME=VALUE", help="a launch argument of one forward kernel")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("kernel_times needs a CUDA device (the profiler times device kernels)")
    rows = [measure(args.seq, args.batch, args.heads, args.head_dim, a, args.reps, args.seed,
                    args.alpha, not args.forward_only, args.set, args.mask) for a in args.scales]
    names = sorted({name for row in rows for name in row["ms"]})
    print(f"causal bf16 alpha {args.alpha:g}, B={args.batch} H={args.heads} N={args.seq} "
          f"D={args.head_dim}, mask {args.mask}; device ms per call")
    print("| a | block sparsity | passes | output-pass tiles | " + " | ".join(names) + " |")
    print("|---" * (4 + len(names)) + "|")
    for row in rows:
        cells = [f"{row['a']:g}", f"{row['block_sparsity']:.3f}", f"{row['passes']:.2f}",
                 f"{row['live_fraction']:.3f}"] + [f"{row['ms'].get(n, 0.0):.3f}" for n in names]
        print(table_row(cells))
    if args.json:
        save_rows(args.json, args, rows)


if __name__ == "__main__":
    main()
