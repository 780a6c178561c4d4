"""Timing, peak memory, error capture and the environment record shared by the benchmarks."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import time
import traceback
from typing import Callable, Optional

import torch


def median_ms(fn: Callable[[], object], device: torch.device, grad_to_none=None) -> float:
    """Median time of one call of fn, in ms.

    CUDA: ``triton.testing.do_bench`` (CUDA events, warm-up, L2 flushed before every call, so
    input sets need no rotation). CPU: a host clock over a few calls (the smoke mode only).
    """
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, grad_to_none=grad_to_none, return_mode="median"))
    times = []
    for _ in range(4):
        for t in grad_to_none or ():
            t.grad = None
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times[1:])


def graph_ms(fn: Callable[[], object], device: torch.device) -> Optional[float]:
    """Median time of one call of fn replayed from a CUDA graph (``do_bench_cudagraph``), in ms:
    the device time without the host's launch overhead, which dominates calls of ~0.1 ms. None
    off CUDA."""
    if device.type != "cuda":
        return None
    from triton.testing import do_bench_cudagraph

    return float(do_bench_cudagraph(fn, return_mode="median"))


def peak_mib(fn: Callable[[], object], device: torch.device, grad_to_none=None) -> Optional[float]:
    """Peak memory allocated during one call of fn above what was allocated before (CUDA only)."""
    if device.type != "cuda":
        return None
    for t in grad_to_none or ():
        t.grad = None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def attempt(measure: Callable[[], dict]) -> dict:
    """measure() or {"error": ...}: one failing implementation (out of memory, an unsupported
    shape) is recorded and does not stop the run."""
    try:
        return measure()
    except Exception as exc:  # noqa: BLE001 (recorded, not hidden)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        last = traceback.extract_tb(exc.__traceback__)[-1]
        return {"error": f"{type(exc).__name__}: {str(exc).strip()[:300]} "
                         f"({last.filename.rsplit('/', 1)[-1]}:{last.lineno})"}


def _git_commit() -> Optional[str]:
    """The checkout's commit, with "-dirty" when the files differ from it (a copied tree can
    carry an older .git: then the commit alone would be wrong)."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=5, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict:
    """Card, versions and date recorded in every result file."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        card = props.name
        memory_gib = round(props.total_memory / 2**30, 1)
    else:
        card = f"cpu {platform.machine()}"
        memory_gib = None
    return {
        "card": card, "card_memory_gib": memory_gib, "torch": torch.__version__,
        "triton": triton_version, "cuda": torch.version.cuda, "python": platform.python_version(),
        "commit": _git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def table_row(cells) -> str:
    """One markdown table row."""
    return "| " + " | ".join(cells) + " |"


def recorded_args(args) -> dict:
    """A tool's arguments as its JSON records them: its output folder and file by their names
    only (a result file names no path of the machine that wrote it)."""
    recorded = dict(vars(args))
    for key in ("out", "json"):
        if isinstance(recorded.get(key), str):
            recorded[key] = os.path.basename(os.path.normpath(recorded[key]))
    return recorded


def save_rows(path: str, args, rows: list, device: str = "cuda") -> None:
    """Write a tool's rows as JSON, with its arguments and the ``environment`` of device."""
    with open(path, "w") as f:
        json.dump({"args": recorded_args(args), "env": environment(torch.device(device)),
                   "rows": rows}, f, indent=1)


def file_tag(env: dict) -> str:
    """A file-name-safe tag: card, torch and Triton versions."""
    raw = f"{env['card']}_torch{env['torch']}_triton{env['triton']}"
    raw = raw.replace("NVIDIA ", "")
    return re.sub(r"[^A-Za-z0-9.]+", "-", raw).strip("-")
