"""Registers, spills, shared memory and compile time of the attention kernels for an NVIDIA Hopper
card, on any machine.

Runs the forward and backward launch helpers of ``kernels`` on small tensors with a launch wrapper
that, instead of running each kernel, compiles it as Triton's JIT would for the card (sm_90 when no
GPU is present): the same constexprs, num_warps and num_stages, integer arguments equal to 1 as
constants and 16-divisible pointers and integers marked so, as the JIT specializes them. ptxas's
report gives the registers and spill bytes per thread, Triton the shared memory per program. It
tells, before any GPU time is spent, whether a change makes a kernel spill or need more shared
memory than the card has, and how long the kernels take to compile. The numbers come from the
installed Triton and its ptxas, which may differ from a GPU machine's.

    python -m benchmarks.registers                                # bfloat16 and float32, D = 128
    python -m benchmarks.registers --dtype bfloat16 --head-dim 64
    python -m benchmarks.registers --mask bool --forward-only     # with a (seq x seq) bool mask
    python -m benchmarks.registers --seq 8192 --forward-only      # the sweep for long keys
"""

from __future__ import annotations

import argparse
import inspect
import re
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from .timing import table_row

_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
          torch.int8: "i8", torch.int32: "i32", torch.int64: "i64", torch.bool: "i1",
          torch.uint8: "u8"}


def use_hopper_without_gpu() -> None:
    """Make Triton compile for an sm_90 card when this machine has no CUDA device."""
    if torch.cuda.is_available():
        return
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver

    class _Hopper:
        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

        def get_active_torch_device(self):
            return torch.device("cpu")

    driver.set_active(_Hopper())


def _specialize(kernel, bound: dict):
    """(signature, constexprs, attrs) for ``triton.compile``, as the JIT specializes ``bound``."""
    signature, constexprs, attrs = {}, {}, {}
    for i, param in enumerate(kernel.params):
        value = bound[param.name]
        if param.is_constexpr or value is None:
            signature[param.name] = "constexpr"
            constexprs[param.name] = value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = "*" + _TYPES[value.dtype]
            if value.data_ptr() % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif hasattr(value, "block_shape"):  # a TensorDescriptor (host-side TMA)
            signature[param.name] = f"tensordesc<{_TYPES[value.base.dtype]}{list(value.block_shape)}>"
        elif isinstance(value, bool):
            signature[param.name] = "i1"
        elif isinstance(value, int):
            if value == 1 and not param.do_not_specialize:
                signature[param.name] = "constexpr"
                constexprs[param.name] = 1
                continue
            signature[param.name] = "i32" if -2**31 <= value < 2**31 else "i64"
            if value % 16 == 0 and not param.do_not_specialize:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[param.name] = "fp32"
    return signature, constexprs, attrs


def _ptxas():
    from triton.backends.nvidia import compiler

    target = torch.cuda.get_device_capability() if torch.cuda.is_available() else (9, 0)
    arch = 10 * target[0] + target[1]
    try:
        return compiler.get_ptxas(arch).path, arch
    except TypeError:  # older Triton: one ptxas for every card
        return compiler.get_ptxas().path, arch


def ptxas_report(ptx: str) -> dict:
    """Registers and spill bytes per thread of the PTX's kernel, from ``ptxas -v``."""
    path, arch = _ptxas()
    suffix = "a" if arch >= 90 else ""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        run = subprocess.run([path, "-v", f"-arch=sm_{arch}{suffix}", str(src), "-o",
                              str(Path(tmp) / "kernel.cubin")], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"ptxas failed: {run.stderr.strip()[-300:]}")

    def number(pattern):
        found = re.search(pattern, run.stderr)
        return int(found.group(1)) if found else 0
    return {"registers": number(r"Used (\d+) registers"),
            "spill_stores": number(r"(\d+) bytes spill stores"),
            "spill_loads": number(r"(\d+) bytes spill loads")}


def compile_launches(run_helpers) -> list[dict]:
    """Compile every kernel launch that ``run_helpers(launch)`` makes, once per specialization;
    one row per kernel: name, options, compile seconds, registers and spill bytes."""
    import triton
    from triton.compiler import ASTSource

    use_hopper_without_gpu()
    target = triton.runtime.driver.active.get_current_target()
    rows, seen = [], set()

    def launch(kernel):
        class Grid:
            def __getitem__(self, grid):
                def call(*args, **kwargs):
                    options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages", "maxnreg")
                               if k in kwargs}
                    bound = dict(zip(inspect.signature(kernel.fn).parameters, args), **kwargs)
                    signature, constexprs, attrs = _specialize(kernel, bound)
                    key = (kernel.fn.__name__, tuple(sorted(signature.items())),
                           tuple(sorted((k, str(v)) for k, v in constexprs.items())),
                           tuple(sorted(options.items())))
                    if key in seen:
                        return
                    seen.add(key)
                    start = time.perf_counter()
                    compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs),
                                              target=target, options=options)
                    seconds = time.perf_counter() - start
                    declared = {p.name for p in kernel.params if p.is_constexpr}
                    flags = {k: v for k, v in constexprs.items()
                             if k in declared and not k.startswith("BLOCK")}
                    rows.append({"kernel": kernel.fn.__name__.removeprefix("adasplash_"),
                                 "options": options, "flags": flags, "compile_s": seconds,
                                 "shared": compiled.metadata.shared,
                                 **ptxas_report(compiled.asm["ptx"])})
                return call
        return Grid()

    run_helpers(launch)
    return rows


def attention_launches(dtype: torch.dtype, head_dim: int, causal: bool = True, seq: int = 1024,
                       mask: str = "none", backward: bool = True):
    """A ``run_helpers`` for ``compile_launches``: the attention forward (with and without the
    backward's u_shift, with the register caps of eager calls and without, as Inductor launches
    it) and, if backward, the backward (with u_shift), on (1, 2, seq, head_dim)
    tensors (seq a multiple of 1024 specializes like the long sequences that matter), with no
    mask or a (seq, seq) "bool" or "float" one."""
    from kernels import attention_bwd, attention_fwd
    from lowering import reference

    def run(launch):
        q = torch.randn(1, 2, seq, head_dim).to(dtype)
        attn_mask = {"none": None, "bool": torch.ones(seq, seq, dtype=torch.bool),
                     "float": torch.zeros(seq, seq, dtype=dtype)}[mask]
        for for_backward, direct_launch in ((False, True), (True, True), (False, False)):
            attention_fwd.attention_forward(q, q, q, attn_mask, causal, None, 1.5,
                                            for_backward=for_backward, launch=launch,
                                            direct_launch=direct_launch)
        if backward:
            out, tau, row_max, tile_max, u_shift = reference.attention_forward(
                q, q, q, attn_mask, 0.0, causal, None, 1.5, None, None, True)
            attention_bwd.attention_backward(q, q, q, q, tau, row_max, tile_max, attn_mask,
                                             causal, None, 1.5, out=out, u_shift=u_shift,
                                             launch=launch)
    return run


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", nargs="+", default=["bfloat16", "float32"],
                        choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--mask", default="none", choices=["none", "bool", "float"])
    parser.add_argument("--forward-only", action="store_true", help="skip the backward kernels")
    args = parser.parse_args(argv)
    print("| dtype | kernel | flags | warps, stages | register cap | compile s | registers | "
          "spill stores B | spill loads B | shared B |")
    print("|---" * 10 + "|")
    for name in args.dtype:
        launches = attention_launches(getattr(torch, name), args.head_dim, seq=args.seq,
                                      mask=args.mask, backward=not args.forward_only)
        for row in compile_launches(launches):
            flags = ", ".join(f"{k}={v}" for k, v in row["flags"].items())
            options = ", ".join(str(row["options"].get(k, "default"))
                                for k in ("num_warps", "num_stages"))
            cap = str(row["options"].get("maxnreg", "none"))
            print(table_row([name, row["kernel"], flags, options, cap, f"{row['compile_s']:.1f}",
                             str(row["registers"]), str(row["spill_stores"]),
                             str(row["spill_loads"]), str(row["shared"])]))


if __name__ == "__main__":
    main()
