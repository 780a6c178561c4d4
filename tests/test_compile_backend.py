"""The backend: registration, configuration, mode/options for Inductor, the compile-cache key,
graph breaks, fullgraph, dynamic shapes, and Inductor's generated code (CPU here, CUDA marked gpu).

GPU tests (``pytest -m gpu tests/test_compile_backend.py``) check that Inductor's output code
contains the adasplash Triton kernels (no call of the reference op) and that
``mode="reduce-overhead"`` (CUDA graphs) works.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounterWithBackend

import adasplash_compile as ac
from adasplash_compile import cache_key
from compile_helpers import aot, assert_close, fresh_compile  # noqa: F401

B, H, N, D = 2, 4, 8, 16
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def attention(q, k, v, softmax=F.softmax):
    s = torch.matmul(q, k.transpose(-2, -1)) * D**-0.5
    causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    s = s.masked_fill(~causal, float("-inf"))
    return torch.matmul(softmax(s, dim=-1), v)


def entmax15(s, dim=-1):
    return ac.entmax(s, alpha=1.5, dim=dim)


def qkv(n=N, device="cpu", dtype=torch.float32):
    return [torch.randn(B, H, n, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3)]


def fw_bw(fn, inputs):
    out = fn(*inputs)
    grads = torch.autograd.grad(out.float().square().sum(), inputs)
    return out.detach(), grads


def test_registered_as_adasplash():
    assert torch._dynamo.lookup_backend("adasplash") is ac.backend


def test_backend_options_are_validated():
    with pytest.raises(ValueError, match="scope must be one of .* got 'some'"):
        ac.Backend(scope="some")
    with pytest.raises(ValueError, match="compiler must be one of .* got 'tvm'"):
        ac.Backend(compiler="tvm")
    with pytest.raises(ValueError, match="alpha must be > 1"):
        ac.Backend(alpha=0.5)
    assert repr(ac.Backend(alpha=2)) == "Backend(alpha=2, scope='all', compiler='inductor', dump_dir=None)"


@pytest.fixture
def inductor_patches(monkeypatch):
    """Capture the config patches the backend hands to compile_fx (the graph then runs eagerly)."""
    import torch._inductor.compile_fx as compile_fx_module

    seen = []

    def fake_compile_fx(gm, example_inputs, config_patches=None):
        seen.append(config_patches)
        return gm.forward

    monkeypatch.setattr(compile_fx_module, "compile_fx", fake_compile_fx)
    return seen


def test_mode_is_translated_for_inductor(inductor_patches):
    from torch._inductor import list_mode_options

    torch.compile(attention, backend=ac.backend, mode="max-autotune")(*qkv())
    (patches,) = inductor_patches
    for key, value in list_mode_options("max-autotune").items():
        assert patches[key] == value
    assert isinstance(patches["post_grad_custom_post_pass"], cache_key.SourceHash)


def test_options_reach_inductor(inductor_patches):
    torch.compile(attention, backend=ac.backend, options={"epilogue_fusion": False})(*qkv())
    assert inductor_patches[0]["epilogue_fusion"] is False


def test_mode_with_an_eager_compiler_is_an_error():
    with pytest.raises(Exception, match="mode='max-autotune' / options=None configure Inductor"):
        torch.compile(attention, backend=aot(), mode="max-autotune")(*qkv())


def test_cache_key_changes_with_the_op_sources(tmp_path, monkeypatch):
    defaults = {p.relative_to(p.parents[1]).as_posix() for p in cache_key.source_files()}
    assert {"lowering/ops.py", "lowering/routing.py", "lowering/reference.py"} <= defaults
    assert any(p.startswith("kernels/") for p in defaults)
    source = tmp_path / "kernel.py"
    monkeypatch.setattr(cache_key, "source_files", lambda: [source])
    source.write_text("BLOCK = 64\n")
    first = cache_key.SourceHash().uuid()
    assert cache_key.SourceHash().uuid() == first
    source.write_text("BLOCK = 128\n")
    assert cache_key.SourceHash().uuid() != first


def test_cache_key_keeps_a_configured_pass():
    calls = []

    class UserPass(cache_key.CustomGraphPass):
        def __call__(self, graph):
            calls.append(graph)

        def uuid(self):
            return "user-pass-v1"

    patches = cache_key.with_cache_key({"post_grad_custom_post_pass": UserPass()})
    combined = patches["post_grad_custom_post_pass"]
    combined("graph")
    assert calls == ["graph"]
    assert combined.uuid() == (cache_key.source_digest(), "user-pass-v1")


def test_no_new_graph_breaks():
    """Graph breaks are Dynamo's: the same graphs with this backend as with a plain one."""
    def f(q, k, v):
        a = attention(q, k, v)
        torch._dynamo.graph_break()
        return attention(a, k, v)

    plain, ours = CompileCounterWithBackend("eager"), CompileCounterWithBackend(aot())
    torch.compile(f, backend=plain)(*qkv())
    torch._dynamo.reset()
    torch.compile(f, backend=ours)(*qkv())
    assert (ours.frame_count, ours.op_count) == (plain.frame_count, plain.op_count) == (2, plain.op_count)


def test_fullgraph_with_the_entmax_function():
    def f(q, k, v):
        return ac.entmax(q @ k.transpose(-2, -1), alpha=1.5) @ v

    inputs = qkv()
    out = torch.compile(f, backend=aot(), fullgraph=True)(*inputs)
    assert_close(out, f(*inputs))


def test_varying_lengths_compile_at_most_twice():
    counter = CompileCounterWithBackend(aot())
    compiled = torch.compile(attention, backend=counter)
    for n in (8, 11, 16, 21):
        inputs = qkv(n)
        out, grads = fw_bw(compiled, inputs)
        ref, ref_grads = fw_bw(lambda *x: attention(*x, softmax=entmax15), inputs)
        assert_close(out, ref)
        for g, rg in zip(grads, ref_grads):
            assert_close(g, rg)
    assert counter.frame_count <= 2


@pytest.mark.slow
def test_inductor_cpu_runs_the_reference_op():
    """On CPU, Inductor's code calls the opaque reference op; forward and backward are exact."""
    from torch._inductor.utils import run_and_get_code

    inputs = qkv()
    compiled = torch.compile(attention, backend=ac.backend)
    (out, grads), codes = run_and_get_code(lambda: fw_bw(compiled, inputs))
    code = "\n".join(codes)
    assert "adasplash.entmax_attention_reference" in code
    assert "adasplash.entmax_attention_backward_reference" in code
    ref, ref_grads = fw_bw(lambda *x: attention(*x, softmax=entmax15), inputs)
    assert_close(out, ref)
    for g, rg in zip(grads, ref_grads):
        assert_close(g, rg)


# -- GPU (run with: python -m pytest -m gpu tests/test_compile_backend.py) ------------------------


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inductor_cuda_code_contains_the_adasplash_kernels(dtype):
    from torch._inductor.utils import run_and_get_code

    inputs = qkv(256, "cuda", dtype)
    compiled = torch.compile(attention, backend=ac.backend)
    (out, grads), codes = run_and_get_code(lambda: fw_bw(compiled, inputs))
    code = "\n".join(codes)
    assert re.search(r"def adasplash_\w+\(", code), "no adasplash Triton kernel in Inductor's code"
    assert "entmax_attention_reference" not in code
    assert "entmax_attention_backward_reference" not in code
    ref, ref_grads = fw_bw(lambda *x: attention(*x, softmax=entmax15), [t.float() for t in inputs])
    assert_close(out, ref.to(dtype), dtype)
    for g, rg in zip(grads, ref_grads):
        assert_close(g, rg.to(dtype), dtype)


@pytest.mark.gpu
@needs_cuda
def test_reduce_overhead_mode_on_cuda():
    inputs = qkv(128, "cuda")
    compiled = torch.compile(attention, backend=ac.backend, mode="reduce-overhead")
    ref, ref_grads = fw_bw(lambda *x: attention(*x, softmax=entmax15), inputs)
    for _ in range(3):  # warm-up, record, replay
        out, grads = fw_bw(compiled, inputs)
        assert_close(out, ref)
        for g, rg in zip(grads, ref_grads):
            assert_close(g, rg)


@pytest.mark.gpu
@needs_cuda
def test_varying_lengths_on_cuda_compile_at_most_twice():
    counter = CompileCounterWithBackend(ac.backend)
    compiled = torch.compile(attention, backend=counter)
    for n in (128, 200, 333):
        inputs = qkv(n, "cuda")
        out, _ = fw_bw(compiled, inputs)
        assert_close(out, attention(*inputs, softmax=entmax15).detach())
    assert counter.frame_count <= 2
