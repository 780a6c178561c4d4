"""Benchmark JSON -> markdown tables, a plot and a short summary.

    python -m benchmarks.report RESULT.json   # (re)writes RESULT.md and RESULT.png, prints the summary
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

MODE_TITLES = {"fwd": "forward", "fwd_bwd": "forward + backward"}


def _get(res: dict, impl: str, mode: str, key: str = "ms") -> Optional[float]:
    return res["impls"].get(impl, {}).get(mode, {}).get(key)


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def _fmt(x: Optional[float], digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _attention_key(res: dict) -> str:
    p = res["point"]
    return f"{'causal' if p['causal'] else 'full'} D={p['head_dim']}"


def _sparsity(res: dict) -> Optional[float]:
    return res.get("sparsity", {}).get("block_sparsity")


def header(data: dict) -> str:
    e = data["env"]
    return (f"{e['card']} | torch {e['torch']} | Triton {e['triton']} | CUDA {e['cuda']} | "
            f"commit {e['commit']} | {e['date']} | preset {data['preset']}")


def attention_table(data: dict, mode: str) -> list[str]:
    rows = [f"### Attention {MODE_TITLES[mode]} (bf16, alpha = 1.5; ratios are times over times)", "",
            "| mask | D | N | B | block sparsity target / measured | SDPA ms | ours ms | adasplash ms "
            "| ours/SDPA | adasplash/SDPA | ours/adasplash | SDPA default ms | ours/SDPA default "
            "| peak mem ours/SDPA | ours path | threshold passes | live tiles |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for res in data["attention"]:
        p = res["point"]
        sdpa, ours, pkg, dflt = (_get(res, n, mode)
                                 for n in ("sdpa", "ours", "adasplash", "sdpa_default"))
        mem = _ratio(_get(res, "ours", mode, "peak_mib"), _get(res, "sdpa", mode, "peak_mib"))
        stats = res.get("kernel_stats", {})
        rows.append(
            f"| {'causal' if p['causal'] else 'none'} | {p['head_dim']} | {p['seq']} | {p['batch']} "
            f"| {p['target']:.2f} / {_fmt(_sparsity(res), 3)} | {_fmt(sdpa, 3)} | {_fmt(ours, 3)} "
            f"| {_fmt(pkg, 3)} | {_fmt(_ratio(ours, sdpa))} | {_fmt(_ratio(pkg, sdpa))} "
            f"| {_fmt(_ratio(ours, pkg))} | {_fmt(dflt, 3)} | {_fmt(_ratio(ours, dflt))} "
            f"| {_fmt(mem)} | {res.get('ours_path', '-')} "
            f"| {_fmt(stats.get('threshold_passes'))} | {_fmt(stats.get('live_tile_fraction'), 3)} |")
    return rows


def entmax_table(data: dict) -> list[str]:
    rows = ["### Standalone entmax-1.5 over rows (forward)", "",
            "| dtype | rows x N | softmax ms | ours ms | adasplash ms | copy ms | ours/softmax "
            "| ours/adasplash | ours/copy | ours GB/s | graph: ours/softmax | graph: ours/adasplash "
            "| zeros | ours path |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for res in data["entmax"]:
        p = res["point"]
        soft, ours, pkg, cp = (_get(res, n, "fwd") for n in ("softmax", "ours", "adasplash", "copy"))
        g_soft, g_ours, g_pkg = (_get(res, n, "fwd", "graph_ms") for n in ("softmax", "ours", "adasplash"))
        zeros = res.get("check", {}).get("zero_fraction")
        rows.append(
            f"| {p['dtype']} | {p['rows']}x{p['seq']} | {_fmt(soft, 3)} | {_fmt(ours, 3)} | {_fmt(pkg, 3)} "
            f"| {_fmt(cp, 3)} | {_fmt(_ratio(ours, soft))} | {_fmt(_ratio(ours, pkg))} "
            f"| {_fmt(_ratio(ours, cp))} | {_fmt(_get(res, 'ours', 'fwd', 'gb_per_s'), 0)} "
            f"| {_fmt(_ratio(g_ours, g_soft))} | {_fmt(_ratio(g_ours, g_pkg))} "
            f"| {_fmt(zeros, 4)} | {res.get('ours_path', '-')} |")
    return rows


def _label(kind: str, p: dict) -> str:
    if kind == "entmax":
        return f"{p['dtype']} {p['rows']}x{p['seq']}"
    return f"{'causal' if p['causal'] else 'full'} D={p['head_dim']} N={p['seq']} bs~{p['target']}"


def problems(data: dict) -> list[str]:
    """Every error and skip, one line per distinct (benchmark, implementation, message)."""
    seen: dict[tuple, list[str]] = {}
    for kind in ("attention", "entmax"):
        for res in data[kind]:
            where = _label(kind, res["point"])
            if "error" in res:
                seen.setdefault((kind, "point", res["error"]), []).append(where)
            for impl, by_mode in res["impls"].items():
                if "skipped" in by_mode:
                    seen.setdefault((kind, impl, "skipped: " + by_mode["skipped"]), []).append(where)
                for mode, r in by_mode.items():
                    for key, tag in (("error", ""), ("graph_error", " graph")):
                        if isinstance(r, dict) and key in r:
                            seen.setdefault((kind, f"{impl} {mode}{tag}", r[key]), []).append(where)
            if "error" in res.get("check", {}):
                seen.setdefault((kind, "check", res["check"]["error"]), []).append(where)
    return [f"- {kind} {what}: {msg} ({len(at)}x: {', '.join(at[:4])}{' ...' if len(at) > 4 else ''})"
            for (kind, what, msg), at in seen.items()]


def markdown(data: dict) -> str:
    lines = ["# adasplash-compile benchmarks", "", header(data), ""]
    if data.get("stopped"):
        lines += [f"Stopped early: {data['stopped']}", ""]
    if data.get("note"):
        lines += [data["note"], ""]
    if data["attention"]:
        for mode in ("fwd", "fwd_bwd"):
            lines += attention_table(data, mode) + [""]
        lines += ["Inputs: q, k = rope(a c + noise), a calibrated per target (see the JSON); block "
                  "sparsity measured exactly over all 64x64 tiles. Peak memory: max_memory_allocated "
                  "delta of one call. Threshold passes: mean per query block (CUDA kernels only); "
                  "live tiles: the fraction of admissible tiles the backward visits (the output "
                  "pass marks in the table the tiles it finds without weight).",
                  ""]
    if data["entmax"]:
        lines += entmax_table(data) + [
            "", "copy = one read + one write of the tensor (memory floor). ms columns: eager calls, "
            "host overhead included; graph: the same call replayed from a CUDA graph (device time).",
            ""]
    issues = problems(data)
    if issues:
        lines += ["### Errors and skips", ""] + issues + [""]
    return "\n".join(lines)


def summary(data: dict) -> str:
    """A short fixed-width table: the ratios the performance targets are stated in."""
    lines = [header(data), f"{'attention':<26}{'bs':>6}{'fwd/SDPA':>10}{'fwd/pkg':>9}"
                           f"{'fwd/dflt':>10}{'f+b/SDPA':>10}{'f+b/pkg':>9}{'f+b/dflt':>10}"
                           f"{'mem/SDPA':>10}"]
    for res in data["attention"]:
        p = res["point"]
        r = [_ratio(_get(res, "ours", m), _get(res, o, m))
             for m in ("fwd", "fwd_bwd") for o in ("sdpa", "adasplash", "sdpa_default")]
        mem = _ratio(_get(res, "ours", "fwd_bwd", "peak_mib"), _get(res, "sdpa", "fwd_bwd", "peak_mib"))
        name = f"{_attention_key(res)} N={p['seq']}"
        lines.append(f"{name:<26}{_fmt(_sparsity(res)):>6}" + "".join(f"{_fmt(x):>{w}}" for x, w in
                                                                     zip(r + [mem], (10, 9, 10, 10, 9, 10, 10))))
    lines.append(f"{'entmax':<26}{'/softmax':>10}{'/pkg':>8}{'/copy':>8}{'graph:/softmax':>16}"
                 f"{'/pkg':>8}")
    for res in data["entmax"]:
        p = res["point"]
        ours, g_ours = _get(res, "ours", "fwd"), _get(res, "ours", "fwd", "graph_ms")
        r = [_ratio(ours, _get(res, o, "fwd")) for o in ("softmax", "adasplash", "copy")]
        r += [_ratio(g_ours, _get(res, o, "fwd", "graph_ms")) for o in ("softmax", "adasplash")]
        name = f"{p['dtype']} {p['rows']}x{p['seq']}"
        lines.append(f"{name:<26}" + "".join(f"{_fmt(x):>{w}}" for x, w in zip(r, (10, 8, 8, 16, 8))))
    for line in problems(data):
        lines.append(line[:160])
    return "\n".join(lines)


def plot(data: dict, path: Path) -> None:
    """Four panels: forward and forward+backward time ratios and peak memory ratio against the
    measured block sparsity; entmax time over softmax time against the row length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    panels = [("fwd", "ms", "forward time / SDPA"), ("fwd_bwd", "ms", "forward+backward time / SDPA"),
              ("fwd_bwd", "peak_mib", "forward+backward peak memory / SDPA")]
    for ax, (mode, key, title) in zip(axes.flat, panels):
        groups: dict[tuple, list] = {}
        for res in data["attention"]:
            groups.setdefault((_attention_key(res), res["point"]["seq"]), []).append(res)
        for color, ((name, seq), group) in enumerate(sorted(groups.items())):
            for impl, style in (("ours", "o-"), ("adasplash", "x--")):
                pts = [(_sparsity(r), _ratio(_get(r, impl, mode, key), _get(r, "sdpa", mode, key)))
                       for r in group]
                pts = sorted((s, y) for s, y in pts if s is not None and y is not None)
                if pts:
                    ax.plot(*zip(*pts), style, color=f"C{color}", label=f"{impl} {name} N={seq}")
        ax.set(title=title, xlabel="measured block sparsity", ylabel="ratio (lower is better)")
    ax = axes.flat[3]
    for color, dtype in enumerate(("float32", "bfloat16")):
        rows = sorted((r for r in data["entmax"] if r["point"]["dtype"] == dtype),
                      key=lambda r: r["point"]["seq"])
        for impl, style in (("ours", "o-"), ("adasplash", "x--"), ("copy", ":")):
            pts = [(r["point"]["seq"], _ratio(_get(r, impl, "fwd"), _get(r, "softmax", "fwd"))) for r in rows]
            pts = [(n, y) for n, y in pts if y is not None]
            if pts:
                ax.plot(*zip(*pts), style, color=f"C{color}", label=f"{impl} {dtype}")
    ax.set(title="entmax-1.5 time / softmax time", xlabel="row length N", ylabel="ratio", xscale="log")
    for ax in axes.flat:
        if ax.get_legend_handles_labels()[0]:
            ax.axhline(1.0, color="gray", lw=0.8)
            ax.set_yscale("log")
            ax.legend(fontsize=7)
    fig.suptitle(header(data), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(json_path: Path) -> tuple[Path, Path]:
    """Write the markdown and the plot next to the JSON; returns their paths."""
    json_path = Path(json_path)
    data = json.loads(json_path.read_text())
    md, png = json_path.with_suffix(".md"), json_path.with_suffix(".png")
    md.write_text(markdown(data))
    plot(data, png)
    return md, png


def main(argv=None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit(__doc__)
    path = Path(args[0])
    md, png = write(path)
    print(f"wrote {md}\n      {png}")
    print(summary(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
