"""Run the benchmarks (DESIGN.md section 6) and write JSON, a markdown table and a plot.

    python -m benchmarks.run                       # --quick on CUDA (about 4 minutes)
    python -m benchmarks.run --full                # every size, causal and not, D 64 and 128
    python -m benchmarks.run --device cpu --smoke  # tiny sizes, seconds, checks the harness only

Files: ``<out>/bench_<preset>_<card>-torch<v>-triton<v>.{json,md,png}``; the JSON is rewritten
after every point, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from . import bench_attention, bench_entmax, report
from .bench_attention import AttentionPoint
from .bench_entmax import EntmaxPoint
from .timing import attempt, environment, file_tag, recorded_args

TARGETS = (0.0, 0.5, 0.75, 0.9, 0.95)

# Attention: bf16, heads x tokens per batch fixed (batch = tokens // seq). Entmax: (elements / seq, seq).
PRESETS = {
    "smoke": dict(tokens=256, heads=2, seqs=(256, 128), head_dims=(16,), causal=(True,),
                  targets=(0.0, 0.5), entmax_seqs=(256, 64), entmax_elements=4096),
    "quick": dict(tokens=16384, heads=16, seqs=(16384, 4096), head_dims=(128,), causal=(True,),
                  targets=TARGETS, entmax_seqs=(1024, 4096, 8192, 16384), entmax_elements=1 << 25),
    "full": dict(tokens=16384, heads=16, seqs=(16384, 1024, 2048, 4096, 8192, 32768),
                 head_dims=(128, 64), causal=(True, False), targets=TARGETS,
                 entmax_seqs=(1024, 2048, 4096, 8192, 16384, 32768), entmax_elements=1 << 25),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    preset = p.add_mutually_exclusive_group()
    for name in PRESETS:
        preset.add_argument(f"--{name}", dest="preset", action="store_const", const=name)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/results",
                   help="output folder (default: $OUT, else benchmarks/results)")
    p.add_argument("--only", choices=("attention", "entmax"), help="run one benchmark")
    p.add_argument("--seq", type=int, nargs="+", help="attention sequence lengths (first runs first)")
    p.add_argument("--head-dim", type=int, nargs="+", help="attention head dims")
    p.add_argument("--targets", type=float, nargs="+", help="target block sparsities")
    p.add_argument("--causal", choices=("yes", "no", "both"), help="attention masks")
    p.add_argument("--modes", nargs="+", choices=bench_attention.MODES, help="attention modes")
    p.add_argument("--impls", nargs="+", help="implementations (default: all of each benchmark)")
    p.add_argument("--entmax-seq", type=int, nargs="+", help="entmax row lengths")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget-s", type=float, help="start no new point after this many seconds")
    p.add_argument("--allow-reference", action="store_true",
                   help="time our op on CUDA even when it routes to the slow reference")
    args = p.parse_args(argv)
    args.preset = args.preset or "quick"
    return args


def plan(args) -> list:
    """The points, most important first: attention at the first length, entmax, then the rest."""
    cfg = PRESETS[args.preset]
    seqs = args.seq or cfg["seqs"]
    causal = {"yes": (True,), "no": (False,), "both": (True, False)}.get(args.causal, cfg["causal"])

    def attention(seq_list):
        return [AttentionPoint(seq=n, batch=max(1, cfg["tokens"] // n), heads=cfg["heads"],
                               head_dim=d, causal=c, target=t)
                for n in seq_list for d in (args.head_dim or cfg["head_dims"]) for c in causal
                for t in (args.targets or cfg["targets"])]

    entmax = [EntmaxPoint(seq=n, rows=max(1, cfg["entmax_elements"] // n), dtype=dt)
              for n in (args.entmax_seq or cfg["entmax_seqs"]) for dt in ("float32", "bfloat16")]
    if args.only == "attention":
        return attention(seqs)
    if args.only == "entmax":
        return entmax
    return attention(seqs[:1]) + entmax + attention(seqs[1:])


def _impls(args, bench) -> list[str]:
    return [n for n in bench.IMPLS if not args.impls or n in args.impls]


def _write_json(data: dict, path: Path) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def main(argv=None) -> Path:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("CUDA is not available: pass --device cpu (with --smoke) to check the harness")
    env = environment(device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench_{args.preset}_{file_tag(env)}.json"
    data = {"env": env, "preset": args.preset, "args": recorded_args(args), "attention": [],
            "entmax": [], "stopped": None}
    points = plan(args)
    start = time.perf_counter()
    bar = tqdm(points, desc="benchmarks", unit="point", file=sys.stdout, dynamic_ncols=True)
    for i, point in enumerate(bar):
        if args.budget_s is not None and time.perf_counter() - start > args.budget_s:
            data["stopped"] = f"time budget of {args.budget_s:g} s reached after {i} of {len(points)} points"
            break
        bar.set_postfix_str(point.label(), refresh=False)
        if isinstance(point, AttentionPoint):
            modes = args.modes or bench_attention.MODES
            kind, res = "attention", attempt(lambda: bench_attention.run_point(
                point, _impls(args, bench_attention), modes, device, args.seed, args.allow_reference))
        else:
            kind, res = "entmax", attempt(lambda: bench_entmax.run_point(
                point, _impls(args, bench_entmax), device, args.seed))
        if "error" in res:  # the point itself failed (calibration, inputs, measurement)
            res = {"point": asdict(point), "error": res["error"], "impls": {}}
        data[kind].append(res)
        data["wall_s"] = round(time.perf_counter() - start, 1)
        _write_json(data, path)
    bar.close()
    if data["stopped"]:
        print(data["stopped"])
    _write_json(data, path)
    md, png = report.write(path)
    print(f"wrote {path}\n      {md}\n      {png}")
    print(report.summary(data))
    return path


if __name__ == "__main__":
    main()
