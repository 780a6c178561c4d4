"""Routing of the ops between the Triton kernels and the reference (no GPU needed: a stand-in
for a CUDA tensor and a stubbed card)."""

import types
import warnings

import pytest
import torch

from kernels.attention_fwd import SHARED_MEMORY
from lowering import routing


def _cuda_like(dtype=torch.bfloat16, head_dim=64):
    return types.SimpleNamespace(device=torch.device("cuda", 0), dtype=dtype,
                                 shape=(1, 2, 128, head_dim))


def _attention_args(q, dropout_p=0.0):
    return (q, q, q, None, dropout_p, True, None, 1.5, None, None)


@pytest.fixture
def card(monkeypatch):
    """Set the stubbed card's shared memory per program (bytes); the routing's cache is reset."""
    def set_shared(nbytes):
        monkeypatch.setattr(routing, "max_shared_memory", lambda index: nbytes)
        routing._attention_fits.cache_clear()
    yield set_shared
    routing._attention_fits.cache_clear()


def test_attention_on_a_card_with_the_kernels_shared_memory_takes_the_kernels(card):
    card(227 * 1024)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert routing.use_triton_attention(*_attention_args(_cuda_like()))
    # still the reference for what the kernels do not cover
    assert not routing.use_triton_attention(*_attention_args(_cuda_like(), dropout_p=0.1))
    assert not routing.use_triton_attention(*_attention_args(_cuda_like(head_dim=320)))
    assert not routing.use_triton_attention(*_attention_args(_cuda_like(dtype=torch.float64)))


def test_attention_on_a_smaller_card_runs_the_reference_and_warns_once(card):
    card(99 * 1024)  # e.g. an RTX 4090 or an L4
    with pytest.warns(UserWarning, match=rf"99 KiB .* need {SHARED_MEMORY // 1024} KiB .*reference"):
        assert not routing.use_triton_attention(*_attention_args(_cuda_like()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per card
        assert not routing.use_triton_attention(*_attention_args(_cuda_like()))
    # the standalone entmax kernels need little shared memory: they still run
    assert routing.use_triton_entmax(_cuda_like(), None)
