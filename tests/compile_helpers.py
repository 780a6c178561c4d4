"""Shared by the compiler tests: a fresh Dynamo state per test, caches off, offline Hugging Face,
an Inductor-free backend, and graph text for expecttest.

Import the fixture into a test module (``from compile_helpers import fresh_compile``) to use it.
"""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch._inductor.config as inductor_config  # noqa: E402
from torch._dynamo.testing import normalize_gm  # noqa: E402

import adasplash_compile as ac  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_compile():
    """Every test starts with no compiled code and no compile caches."""
    warnings.filterwarnings("ignore", "dynamo_pgo force disabled")
    torch._dynamo.reset()
    with inductor_config.patch(force_disable_caches=True):
        yield
    torch._dynamo.reset()


def aot(**options) -> ac.Backend:
    """The backend with AOTAutograd but without Inductor: the pass and the op's autograd, fast."""
    return ac.Backend(compiler="aot_eager", **options)


def graph_text(code: str) -> str:
    """A graph's readable code without comments, for assertExpectedInline."""
    return normalize_gm(code).strip()


def assert_close(actual, expected, dtype=torch.float32):
    """Equal up to the rounding of ``dtype``, relative to the largest entry of ``expected``."""
    tol = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    scale = max(1.0, expected.detach().abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale)


def assert_differs(actual, expected, at_least=1e-3):
    """The compiled model is not the softmax one: some output moved by more than ``at_least``."""
    diff = (actual - expected).abs().max().item()
    assert diff > at_least, f"output equals the softmax model's (max difference {diff:.2e})"
