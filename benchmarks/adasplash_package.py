"""The ``adasplash`` package (reference AdaSplash-2 implementation), where it is installed."""

from __future__ import annotations

from typing import Optional

import torch


def module():
    """The imported package, or None where it is not installed."""
    try:
        import adasplash
    except ImportError:
        return None
    return adasplash


def unavailable(device: torch.device) -> Optional[str]:
    """Why the package cannot run here, or None."""
    if device.type != "cuda":
        return "needs CUDA"
    if module() is None:
        return "not installed"
    return None
