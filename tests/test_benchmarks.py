"""The benchmark harness on CPU at tiny sizes: the input generator, the exact block-sparsity
measurement against a dense float64 oracle, and one smoke run with the files it writes."""

import json
import math

import pytest
import torch

import lowering  # noqa: F401  (registers torch.ops.adasplash)
from benchmarks import inputs, report, run

TILE = 64


def _oracle_block_sparsity(oracle, q, k, causal, alpha=1.5, mask=None):
    """Dead / admissible 64x64 tiles from dense float64 bisection entmax, tile by tile."""
    q64, k64 = q.double(), k.double()
    s = q64 @ k64.transpose(-1, -2) / math.sqrt(q.shape[-1])
    n, m = s.shape[-2:]
    if causal:
        s = s.masked_fill(torch.ones(n, m).tril().logical_not(), -math.inf)
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf)
    p = oracle.entmax(s, alpha)
    dead = admissible = 0
    for i in range(0, n, TILE):
        for j in range(0, m, TILE):
            tile_s, tile_p = s[..., i:i + TILE, j:j + TILE], p[..., i:i + TILE, j:j + TILE]
            adm = torch.isfinite(tile_s).flatten(-2).any(-1)
            live = (tile_p > 0).flatten(-2).any(-1)
            dead += int((adm & ~live).sum())
            admissible += int(adm.sum())
    return dead, admissible


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("seq, a", [(200, 16.0), (256, 32.0)])
def test_block_sparsity_matches_dense_oracle(oracle, causal, seq, a):
    q, k, v = inputs.attention_inputs(2, 2, seq, 16, a, dtype=torch.float32, device="cpu", seed=seq)
    dead, admissible = _oracle_block_sparsity(oracle, q, k, causal)
    got = inputs.block_sparsity(q, k, causal=causal)
    assert (got["dead_tiles"], got["admissible_tiles"]) == (dead, admissible)
    assert got["block_sparsity"] == pytest.approx(dead / admissible)
    assert 0 < dead < admissible, "a must give a partly sparse pattern"
    _, tau, row_max, *_ = torch.ops.adasplash.entmax_attention(
        q, k, v, None, 0.0, causal, None, 1.5, None, None)
    tau = tau + 0.5 * row_max  # the op's tau is relative to (alpha - 1) row_max
    assert inputs.block_sparsity(q, k, causal=causal, tau=tau) == got
    rows = inputs.sample_tile_rows(seq, 2)
    assert inputs.tau_error(q, k, tau, causal=causal, tile_rows=rows) < 1e-5
    assert inputs.tau_error(q, k, tau + 0.25, causal=causal, tile_rows=rows) == pytest.approx(0.25, abs=1e-5)


@pytest.mark.parametrize("kind", ["bool", "key-padding"])
def test_block_sparsity_with_a_mask_matches_dense_oracle(oracle, kind):
    """The benchmarks' masks (a shared (N, N) one, key padding (B, 1, 1, N); 90% kept by default,
    60% here) and the block sparsity under them, with a whole tile's keys excluded as well: such
    tiles are not admissible."""
    q, k, v = inputs.attention_inputs(2, 2, 200, 16, 16.0, dtype=torch.float32, device="cpu",
                                      seed=5)
    mask = inputs.attention_mask(kind, 2, 200, device="cpu", seed=6, keep=0.6)
    assert mask.shape == ((200, 200) if kind == "bool" else (2, 1, 1, 200))
    assert 0.5 < mask.double().mean() < 0.7
    assert torch.equal(mask, inputs.attention_mask(kind, 2, 200, device="cpu", seed=6, keep=0.6))
    rows = slice(128, 192) if kind == "bool" else slice(None)  # one tile; key padding: a key tile
    mask[..., rows, 0:64] = False
    dead, admissible = _oracle_block_sparsity(oracle, q, k, True, mask=mask)
    got = inputs.block_sparsity(q, k, causal=True, attn_mask=mask)
    assert (got["dead_tiles"], got["admissible_tiles"]) == (dead, admissible)
    unmasked = inputs.block_sparsity(q, k, causal=True)
    assert got["admissible_tiles"] < unmasked["admissible_tiles"]
    assert inputs.attention_mask("none", 2, 200, device="cpu", seed=6) is None
    with pytest.raises(ValueError, match="mask kind must be one of"):
        inputs.attention_mask("causal", 2, 200, device="cpu", seed=6)


def test_rope_scores_depend_on_offset_only():
    c1, c2 = torch.randn(2, 1, 32, dtype=torch.float64)
    q, k = inputs.rope(c1.expand(40, 32)), inputs.rope(c2.expand(40, 32))
    s = q @ k.T
    torch.testing.assert_close(s[1:, 1:], s[:-1, :-1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q.norm(dim=-1), c1.norm().expand(40).to(q.dtype), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_calibration_hits_targets(causal):
    shape = dict(heads=4, seq=512, head_dim=32)
    for target in (0.0, 0.5, 0.8):
        calib = inputs.calibrate(target, causal=causal, dtype=torch.bfloat16, device="cpu", seed=3, **shape)
        q, k, _ = inputs.attention_inputs(2, shape["heads"], shape["seq"], shape["head_dim"], calib["a"],
                                          dtype=torch.bfloat16, device="cpu", seed=3)
        measured = inputs.block_sparsity(q, k, causal=causal)["block_sparsity"]
        assert measured == pytest.approx(target, abs=0.1), calib
        assert (calib["a"] == 0) == (target == 0)
        if target > 0 and calib["a"] < inputs.A_MAX:  # reachable: at or above the target
            assert target <= calib["estimate"] <= target + 0.05, calib


def test_smoke_run_writes_json_markdown_and_plot(tmp_path, capsys):
    path = run.main(["--device", "cpu", "--smoke", "--out", str(tmp_path)])
    data = json.loads(path.read_text())
    assert {"card", "torch", "triton"} <= data["env"].keys()
    assert data["env"]["torch"].split("+")[0] in path.name
    assert data["args"]["out"] == tmp_path.name  # its name only, no path of this machine
    assert len(data["attention"]) == 4 and len(data["entmax"]) == 4
    for res in data["attention"]:
        sp = res["sparsity"]
        assert sp["admissible_tiles"] > 0 and 0 <= sp["block_sparsity"] < 1
        assert sp["tau_source"] == "op" and sp["tau_max_abs_err_vs_reference"] < 1e-4
        assert res["check"]["ours_finite"]
        stats = res["kernel_stats"]  # the reference path: no passes to count
        assert stats["threshold_passes"] is None
        assert 1 - stats["live_tile_fraction"] == pytest.approx(sp["block_sparsity"], abs=0.05)
        for impl in ("ours", "sdpa"):
            for mode in ("fwd", "fwd_bwd"):
                assert res["impls"][impl][mode]["ms"] > 0, (impl, mode, res["impls"][impl])
        assert res["impls"]["adasplash"] == {"skipped": "needs CUDA"}
    for res in data["entmax"]:
        assert all(res["impls"][n]["fwd"]["ms"] > 0 for n in ("ours", "softmax", "copy"))
        assert 0 < res["check"]["zero_fraction"] < 1 and res["check"]["max_row_sum_err"] < 1e-2
    md = path.with_suffix(".md").read_text()
    assert "| causal | 16 | 256 | 1 |" in md and "| float32 | 16x256 |" in md
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.summary(data) in capsys.readouterr().out


def test_budget_stops_before_the_first_point(tmp_path):
    path = run.main(["--device", "cpu", "--smoke", "--out", str(tmp_path), "--budget-s", "0"])
    data = json.loads(path.read_text())
    assert data["attention"] == [] and data["entmax"] == []
    assert "after 0 of 8 points" in data["stopped"]
    assert "Stopped early" in path.with_suffix(".md").read_text()


def test_failures_are_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setitem(run.bench_entmax.IMPLS, "softmax", boom)
    monkeypatch.setattr(run.bench_attention.inputs, "calibrate", boom)
    args = ["--device", "cpu", "--smoke", "--out", str(tmp_path), "--seq", "128", "--targets", "0.5",
            "--entmax-seq", "64"]
    data = json.loads(run.main(args).read_text())
    assert len(data["entmax"]) == 2 and len(data["attention"]) == 1
    for res in data["entmax"]:
        assert "RuntimeError: boom" in res["impls"]["softmax"]["fwd"]["error"]
        assert res["impls"]["ours"]["fwd"]["ms"] > 0
    assert "RuntimeError: boom" in data["attention"][0]["error"]
    md = next(tmp_path.glob("*.md")).read_text()
    assert "entmax softmax fwd: RuntimeError: boom" in md and "attention point: RuntimeError: boom" in md


def test_pass_counter_reports_the_kernels_passes_and_errors(capsys):
    """benchmarks.passes: the threshold kernel's passes on benchmark inputs, its tau and output
    against the reference, and its table."""
    from benchmarks import passes

    r = passes.count_passes(seq=192, head_dim=32, heads=1, alpha=1.5, a=20.0)
    assert 1 <= r["mean_passes"] <= r["max_passes"] <= 32
    assert r["tau_err"] < 1e-5 and r["out_err"] < 1e-4
    assert 0 < r["block_sparsity"] < 1
    passes.main(["--seq", "128", "--head-dim", "16", "--heads", "1", "--alphas", "2", "--scales", "5"])
    assert "| 2 | 5 |" in capsys.readouterr().out


def test_save_rows_records_arguments_environment_and_rows(tmp_path):
    """The JSON of the GPU tools (kernel_times, host_overhead): their arguments, the machine and
    the rows, as written."""
    import argparse

    from benchmarks.timing import save_rows, table_row

    path = tmp_path / "rows.json"
    rows = [{"a": 1.5, "ms": {"fwd": 2.0}}]
    save_rows(str(path), argparse.Namespace(seq=128, alpha=1.3, json=str(path)), rows, device="cpu")
    saved = json.loads(path.read_text())
    # the output file by its name only: no path of the machine that wrote it
    assert saved["args"] == {"seq": 128, "alpha": 1.3, "json": "rows.json"}
    assert saved["rows"] == rows
    assert saved["env"]["torch"] == torch.__version__ and saved["env"]["card"].startswith("cpu")
    assert table_row(["1", "0.5"]) == "| 1 | 0.5 |"


def _registers_rows(*args):
    """The rows of ``python -m benchmarks.registers ARGS``, run as a command (no TRITON_INTERPRET),
    as dicts of cells by column; skips where this Triton cannot compile for a GPU."""
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-m", "benchmarks.registers", *args], cwd=root,
                          env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 and ("set_active" in done.stderr or "get_ptxas" in done.stderr):
        pytest.skip("this Triton cannot compile for a GPU here: "
                    + done.stderr.strip().splitlines()[-1])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = lines[0].strip("| ").split(" | ")
    return [dict(zip(header, line.strip("| ").split(" | "))) for line in lines[2:]]


def test_registers_compiles_every_attention_kernel():
    """``benchmarks.registers`` compiles each attention kernel launch for a Hopper card (no GPU
    needed) and reads registers and spills from ptxas: one row per kernel specialization (the
    output pass with and without u_shift through descriptors, as eager calls launch it, and
    without u_shift through pointers, as Inductor does), registers within the card's 255."""
    rows = _registers_rows("--dtype", "bfloat16", "--head-dim", "64")
    kernels = [row["kernel"] for row in rows]
    assert sorted(set(kernels)) == ["attention_bwd_dkdv", "attention_bwd_dq",
                                    "attention_bwd_key_lists", "attention_bwd_query_lists",
                                    "attention_max", "attention_out", "attention_threshold"]
    assert kernels.count("attention_out") == 3
    for row in rows:
        registers, stores, loads, shared = (int(row[c]) for c in (
            "registers", "spill stores B", "spill loads B", "shared B"))
        assert 0 < registers <= 255 and stores >= 0 and loads >= 0 and shared > 0, row


@pytest.mark.parametrize("mask", ["bool", "float"])
def test_masked_forward_fits_a_hopper_card(mask):
    """With a mask, bf16 and D = 128, the forward kernels need at most the routing's SHARED_MEMORY
    (at most a Hopper card's 227 KiB per program) and the dense sweep does not spill (4 key tiles per sweep
    step needed 288 KiB: the GPU refused the launch)."""
    rows = _registers_rows("--dtype", "bfloat16", "--head-dim", "128", "--mask", mask,
                           "--forward-only")
    assert {row["kernel"] for row in rows} == {"attention_max", "attention_threshold",
                                               "attention_out"}
    from kernels.attention_fwd import SHARED_MEMORY

    for row in rows:
        assert f"MASK_KIND={1 if mask == 'bool' else 2}" in row["flags"], row
        assert int(row["shared B"]) <= SHARED_MEMORY, row
        if row["kernel"] == "attention_max":
            assert int(row["spill stores B"]) == 0 and int(row["spill loads B"]) == 0, row


def test_unmasked_forward_fits_a_hopper_card():
    """Without a mask, bf16 and D = 128, beyond SHORT_SWEEP_KEYS keys, the dense sweep takes 4 key
    tiles per step in 3 pipeline stages, through the key descriptor in eager launches and
    pointers in Inductor's: the most shared memory of any attention kernel, which must stay
    within the routing's SHARED_MEMORY (at most a Hopper card's 227 KiB). The threshold kernel,
    capped at THRESHOLD_REGISTERS, spills at most a few dozen words: 28 bytes with Triton 3.9's
    ptxas before the listing pass; with it 184 stored and 220 loaded (Triton 3.6's, on the GPU
    where the kernel was timed faster than before: 148 and 148); with the table start's layout of
    its own, 8 and 16 bytes with Triton 3.6 (the GPU's), 200 and 208 with Triton 3.9."""
    from kernels.attention_fwd import SHARED_MEMORY, SHORT_SWEEP_KEYS, THRESHOLD_REGISTERS

    assert SHARED_MEMORY <= 227 * 1024
    rows = _registers_rows("--dtype", "bfloat16", "--head-dim", "128", "--forward-only",
                           "--seq", str(2 * SHORT_SWEEP_KEYS))
    sweeps = {row["flags"].split("KEY_TMA=")[1].split(",")[0]: row for row in rows
              if row["kernel"] == "attention_max"}  # eager launches (descriptor), and Inductor's
    assert sweeps.keys() == {"True", "False"}, sweeps
    for sweep in sweeps.values():
        assert "T=4" in sweep["flags"] and sweep["warps, stages"] == "8, 3", sweep
    assert all(int(row["shared B"]) <= SHARED_MEMORY for row in rows), rows
    thresholds = {row["register cap"]: row for row in rows
                  if row["kernel"] == "attention_threshold"}  # eager launches, and Inductor's
    assert thresholds.keys() == {str(THRESHOLD_REGISTERS), "none"}, thresholds
    threshold = thresholds[str(THRESHOLD_REGISTERS)]
    assert int(threshold["registers"]) <= THRESHOLD_REGISTERS, threshold
    assert int(threshold["spill stores B"]) <= 256 and int(threshold["spill loads B"]) <= 256


def test_kernel_times_settings_reach_one_kernel():
    """``--set KERNEL:NAME=VALUE`` of kernel_times: parsed with its type, passed to the launches
    of that kernel only (on top of the launch helper's own arguments), and bad text refused."""
    import types

    from benchmarks.kernel_times import launch_with, parse_setting

    assert parse_setting("threshold:MAX_STEPS=1") == ("threshold", "MAX_STEPS", 1)
    assert parse_setting("max:scale=0.5") == ("max", "scale", 0.5)
    assert parse_setting("out:STATS=True") == ("out", "STATS", True)
    with pytest.raises(ValueError, match="KERNEL:NAME=VALUE"):
        parse_setting("MAX_STEPS=1")

    calls = []

    class Kernel:
        def __init__(self, name):
            self.fn = types.SimpleNamespace(__name__=name)

        def __getitem__(self, grid):
            return lambda *args, **kwargs: calls.append((self.fn.__name__, grid, args, kwargs))

    launch = launch_with([("threshold", "MAX_STEPS", 1), ("threshold", "num_stages", 3)])
    launch(Kernel("adasplash_attention_threshold"))[(4, 2)](7, MAX_STEPS=32, num_warps=4)
    launch(Kernel("adasplash_attention_out"))[(4, 2)](7, MAX_STEPS=32)
    assert calls == [
        ("adasplash_attention_threshold", (4, 2), (7,),
         {"MAX_STEPS": 1, "num_warps": 4, "num_stages": 3}),
        ("adasplash_attention_out", (4, 2), (7,), {"MAX_STEPS": 32}),
    ]
