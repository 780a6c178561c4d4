"""Operators of adasplash-compile: torch.library ops, fakes, autograd, device routing, reference."""

from . import ops, reference  # noqa: F401  (importing ops registers torch.ops.adasplash.*)
from .layout import TILE  # noqa: F401
