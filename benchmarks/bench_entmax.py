"""Standalone entmax-1.5 over rows: ours against ``torch.softmax``, the ``adasplash`` package's
Triton entmax and a copy of the tensor (the read + write memory floor), on one (rows, seq)
standard-normal tensor per point."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

import adasplash_compile
from lowering import routing

from . import adasplash_package
from .timing import attempt, graph_ms, median_ms

ALPHA = 1.5


@dataclass(frozen=True)
class EntmaxPoint:
    """entmax over the last axis of a (rows, seq) tensor."""

    seq: int
    rows: int
    dtype: str

    def label(self) -> str:
        return f"entmax {self.dtype} {self.rows}x{self.seq}"


def ours(x, out):
    return adasplash_compile.entmax(x, alpha=ALPHA, dim=-1)


def softmax(x, out):
    return torch.softmax(x, dim=-1)


def package(x, out):
    return adasplash_package.module().triton_entmax(x, alpha=ALPHA)


def copy(x, out):
    return out.copy_(x)


IMPLS = {"ours": ours, "softmax": softmax, "adasplash": package, "copy": copy}


def _measure(fn, x, out, device) -> dict:
    """Eager time per call (with the host's overhead) and, on CUDA, the time of a replayed graph."""
    with torch.no_grad():
        ms = median_ms(lambda: fn(x, out), device)
        graph = attempt(lambda: {"ms": graph_ms(lambda: fn(x, out), device)})
    return {"ms": ms, "gb_per_s": 2 * x.numel() * x.element_size() / ms / 1e6,
            "graph_ms": graph.get("ms"), **({"graph_error": graph["error"]} if "error" in graph else {})}


def _check(x, with_package: bool) -> dict:
    """Our output's fraction of zeros and row-sum error, and its distance to the package's."""
    with torch.no_grad():
        mine = ours(x, None).float()
        check = {"zero_fraction": float((mine == 0).float().mean()),
                 "max_row_sum_err": float((mine.sum(-1) - 1).abs().max())}
        if with_package:
            check["max_abs_diff_vs_adasplash"] = float((package(x, None).float() - mine).abs().max())
    return check


def run_point(point: EntmaxPoint, impls, device: torch.device, seed: int) -> dict:
    start = time.perf_counter()
    gen = torch.Generator(device).manual_seed(seed)
    x = torch.randn(point.rows, point.seq, device=device, generator=gen).to(getattr(torch, point.dtype))
    out = torch.empty_like(x)
    path = "triton" if routing.use_triton_entmax(x, None) else "reference"
    result = {"point": asdict(point), "alpha": ALPHA, "seed": seed, "ours_path": path, "impls": {}}
    for name in impls:
        why = adasplash_package.unavailable(device) if name == "adasplash" else None
        result["impls"][name] = ({"skipped": why} if why else
                                 {"fwd": attempt(lambda: _measure(IMPLS[name], x, out, device))})
    ran = [n for n in impls if "skipped" not in result["impls"][n]]
    if "ours" in ran:
        result["check"] = attempt(lambda: _check(x, "adasplash" in ran))
    result["wall_s"] = round(time.perf_counter() - start, 2)
    return result
