"""The examples: each script run as a user runs it (a subprocess, tiny sizes, CPU, a few steps) in
a temporary folder, and what it writes checked; their building blocks against independent
computations (the recall task against a scan of its tokens, the sparsity count against the
float64 bisection oracle, the learned-alpha attention against autograd through ``entmax_bisect``).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))

import hf_attention  # noqa: E402
import learnable_alpha  # noqa: E402
import sparsity_probe  # noqa: E402
from conftest import bisect_entmax  # noqa: E402
from recall_task import RecallTask  # noqa: E402

TINY_MODEL = ["--seq-len", "48", "--num-pairs", "4", "--num-queries", "4", "--num-keys", "16",
              "--batch-size", "4", "--hidden", "32", "--layers", "2", "--heads", "2", "--warmup", "2",
              "--compile", "aot_eager", "--no-progress"]


def start_example(script: str, *args: str, cwd: Path) -> subprocess.Popen:
    """Start ``python examples/<script> args`` in ``cwd``, offline, on the CPU."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.Popen([sys.executable, str(EXAMPLES / script), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, check: bool = True) -> subprocess.CompletedProcess:
    """Wait for a started example; with ``check``, fail the test unless it succeeded."""
    stdout, stderr = process.communicate(timeout=600)
    if check:
        assert process.returncode == 0, f"{process.args} failed:\n{stdout}\n{stderr}"
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run_example(script: str, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """``python examples/<script> args`` in ``cwd``, offline, on the CPU."""
    return finish(start_example(script, *args, cwd=cwd), check)


def assert_png(path: Path) -> None:
    """A readable image of plausible size."""
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] >= 200 and image.shape[1] >= 200 and image.shape[2] in (3, 4)
    assert image.std() > 0  # not blank


def assert_finite(values) -> None:
    flat = torch.tensor(values, dtype=torch.float64).flatten()
    assert flat.numel() > 0 and torch.isfinite(flat).all(), values


# -- the recall task ----------------------------------------------------------------------------

def test_recall_batches_answer_each_query_with_its_stored_value():
    task = RecallTask(seq_len=40, num_pairs=6, num_queries=4, num_keys=10, num_values=12, num_filler=5)
    batch = task.batch(batch_size=8, seed=3, index=5)
    assert batch.ids.shape == (8, 40) and batch.answers.shape == (8, 4)
    for row, answers in zip(batch.ids.tolist(), batch.answers.tolist()):
        pairs = dict(zip(row[0:12:2], row[1:12:2]))
        assert len(pairs) == 6 and all(k < 10 for k in pairs) and all(10 <= v < 22 for v in pairs.values())
        assert all(22 <= t < 27 for t in row[12:32])  # filler
        queries = [row[p] for p in batch.query_positions.tolist()]
        assert len(set(queries)) == 4 and set(queries) <= set(pairs)
        assert answers == [pairs[q] for q in queries] == [row[p + 1] for p in batch.query_positions.tolist()]
    again, other = task.batch(8, seed=3, index=5), task.batch(8, seed=3, index=6)
    assert torch.equal(again.ids, batch.ids) and not torch.equal(other.ids, batch.ids)


def test_recall_task_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="num_queries"):
        RecallTask(seq_len=64, num_pairs=4, num_queries=5)
    with pytest.raises(ValueError, match="too short"):
        RecallTask(seq_len=20, num_pairs=8, num_queries=8)


# -- the sparsity probe ------------------------------------------------------------------------

def causal_padded_mask(b: int, n: int, lengths) -> torch.Tensor:
    """(B, 1, N, N) bool, True = attend: causal, and keys past each sequence's length excluded."""
    keep = torch.ones(n, n, dtype=torch.bool).tril().expand(b, 1, n, n).clone()
    for i, length in enumerate(lengths):
        keep[i, :, :, length:] = False
    return keep


@pytest.mark.parametrize("masking", ["causal", "bool"])
@pytest.mark.parametrize("per_head_alpha", [False, True])
def test_layer_sparsity_counts_the_oracles_zeros_and_all_zero_tiles(masking, per_head_alpha):
    b, hq, hkv, n, d, tile = 2, 4, 2, 150, 8, 64
    q, k, v = torch.randn(b, hq, n, d), torch.randn(b, hkv, n, d), torch.randn(b, hkv, n, d)
    q[:, :, :, 0] += torch.linspace(0, 6, n)  # queries prefer recent keys: some all-zero tiles
    k[:, :, :, 0] += torch.linspace(0, 6, n)
    alpha = torch.tensor([1.2, 1.5, 1.8, 2.0]) if per_head_alpha else 1.5
    if masking == "causal":
        keep, arguments = causal_padded_mask(b, n, [n, n]), dict(is_causal=True)
    else:
        keep = causal_padded_mask(b, n, [n, 100])
        arguments = dict(attn_mask=keep)
    got = sparsity_probe.layer_sparsity(q, k, v, alpha, scale=0.3, enable_gqa=True, **arguments)

    scores = 0.3 * q.double() @ k.double().repeat_interleave(2, dim=1).transpose(-2, -1)
    p = bisect_entmax(scores.masked_fill(~keep, float("-inf")), alpha.view(-1, 1) if per_head_alpha else alpha)
    keep = keep.expand_as(p) & (keep.sum(-1, keepdim=True) > 0)
    admissible = keep.sum().item()
    zeros, near_zeros = (((p < eps) & keep).sum().item() / admissible for eps in (1e-30, 1e-6))
    tiles = torch.stack([torch.stack([(p[..., i:i + tile, j:j + tile] > 0).any((-2, -1)),
                                      keep[..., i:i + tile, j:j + tile].any((-2, -1))], -1)
                         for i in range(0, n, tile) for j in range(0, n, tile)])
    all_zero = (~tiles[..., 0] & tiles[..., 1]).sum().item() / tiles[..., 1].sum().item()
    assert 0.2 < zeros < 0.99 and 0 < all_zero < 1  # a meaningful case
    # weights below 1e-6 may round either way in float32
    assert zeros - 1 / admissible <= got["zero_fraction"] <= near_zeros + 1 / admissible
    # the tiles the kernels skip: known all-zero from per-tile bounds, so never more than all-zero ones
    assert 0 < got["block_sparsity"] <= all_zero + 1e-12


# -- the learned-alpha attention ----------------------------------------------------------------

@pytest.mark.parametrize("masking", ["causal", "bool"])
def test_learned_alpha_attention_is_entmax_with_alpha_one_plus_sigmoid(masking):
    entmax = pytest.importorskip("entmax")
    b, hq, hkv, n, d = 2, 4, 2, 10, 8
    module = torch.nn.Module()
    module.alpha_logit = torch.nn.Parameter(torch.tensor([-1.0, 0.0, 0.5, 2.0]))
    q, k, v = torch.randn(b, hq, n, d), torch.randn(b, hkv, n, d), torch.randn(b, hkv, n, d)
    keep = causal_padded_mask(b, n, [n, 7])
    mask = None if masking == "causal" else keep  # Hugging Face's SDPA masks: None for plain causal
    if mask is None:
        keep = causal_padded_mask(b, n, [n, n])
    out, weights = hf_attention.entmax_attention_forward(module, q, k, v, mask, scaling=0.5,
                                                         alpha=learnable_alpha.learned_alpha(module))
    assert weights is None and out.shape == (b, n, hq, d)
    g = torch.linspace(-1, 1, out.numel()).view(out.shape)
    (out * g).sum().backward()

    w = module.alpha_logit.detach().clone().requires_grad_()
    kk, vv = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    scores = (0.5 * q @ kk.transpose(-2, -1)).masked_fill(~keep, float("-inf"))
    alpha = (1 + torch.sigmoid(w)).view(1, hq, 1, 1).expand(b, hq, n, 1)
    expected = (entmax.entmax_bisect(scores, alpha, dim=-1, n_iter=100) @ vv).transpose(1, 2)
    (expected * g).sum().backward()
    torch.testing.assert_close(out, expected.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(module.alpha_logit.grad, w.grad, rtol=1e-3, atol=1e-5)


# -- train_long_context.py ----------------------------------------------------------------------

def read_log(folder: Path) -> dict:
    return json.loads((folder / "log.json").read_text())


def without_times(log: dict) -> dict:
    """Every logged number but the step times (which vary from run to run)."""
    return {name: {part: {k: v for k, v in curves.items() if k != "seconds"} for part, curves in model.items()}
            for name, model in log["models"].items()}


def test_train_long_context_logs_plots_and_resumes_exactly(tmp_path):
    """In bfloat16, as the GPU preset (the float32 path: the learnable-alpha test)."""
    args = TINY_MODEL + ["--eval-every", "2", "--save-every", "3", "--dtype", "bfloat16"]
    full_run = start_example("train_long_context.py", *args, "--steps", "8", "--out", "full", cwd=tmp_path)
    run_example("train_long_context.py", *args, "--steps", "4", "--out", "split", cwd=tmp_path)
    assert "2 of 2 attention sites rewritten" in finish(full_run).stdout
    first_half = read_log(tmp_path / "split")
    changed = list(args)
    changed[changed.index("--hidden") + 1] = "64"
    refused = run_example("train_long_context.py", *changed, "--steps", "8", "--out", "split", "--resume",
                          cwd=tmp_path, check=False)
    assert refused.returncode != 0 and "--hidden 32 vs 64" in refused.stderr
    run_example("train_long_context.py", *args, "--steps", "8", "--out", "split", "--resume", cwd=tmp_path)

    full = read_log(tmp_path / "full")
    assert set(full) == {"config", "models"} and set(full["models"]) == {"softmax", "entmax"}
    for name, model in full["models"].items():
        train, held_out = model["train"], model["eval"]
        assert train["step"] == list(range(1, 9)) and held_out["step"] == [2, 4, 6, 8]
        for key in ("loss", "accuracy", "seconds"):
            assert len(train[key]) == 8
            assert_finite(train[key])
        assert all(0 <= a <= 1 for a in train["accuracy"] + held_out["accuracy"])
        assert all(s > 0 for s in train["seconds"])
        assert len(set(train["loss"])) > 1  # it trains
    for measure in ("zero_fraction", "block_sparsity"):
        values = full["models"]["entmax"]["eval"][measure]
        assert len(values) == 4 and all(len(s) == 2 and all(0 <= x <= 1 for x in s) for s in values)
    assert full["models"]["softmax"]["train"]["loss"] != full["models"]["entmax"]["train"]["loss"]
    assert_png(tmp_path / "full" / "curves.png")

    assert first_half["models"]["entmax"]["train"]["step"] == [1, 2, 3, 4]
    assert without_times(read_log(tmp_path / "split")) == without_times(full)  # resumed == uninterrupted
    assert_png(tmp_path / "split" / "curves.png")


def test_train_long_context_resume_needs_a_checkpoint(tmp_path):
    result = run_example("train_long_context.py", "--out", "nowhere", "--resume", cwd=tmp_path, check=False)
    assert result.returncode != 0 and "no checkpoint" in result.stderr


# -- learnable_alpha.py -------------------------------------------------------------------------

def test_learnable_alpha_logs_and_plots_moving_alphas(tmp_path):
    run_example("learnable_alpha.py", *TINY_MODEL, "--steps", "6", "--log-every", "2", "--eval-every", "3",
                "--alpha-lr", "0.1", "--out", "alpha", cwd=tmp_path)
    log = json.loads((tmp_path / "alpha" / "alphas.json").read_text())
    assert set(log) == {"config", "initial_alpha", "train", "eval"}
    assert log["initial_alpha"] == [[1.5, 1.5], [1.5, 1.5]]  # --alpha-init, 2 layers x 2 heads
    train, held_out = log["train"], log["eval"]
    assert train["step"] == [2, 4, 6] and held_out["step"] == [3, 6]
    assert_finite(train["loss"] + train["accuracy"] + held_out["loss"] + held_out["accuracy"])
    for record in train["alpha"]:
        assert len(record) == 2 and all(len(heads) == 2 and all(1 < a < 2 for a in heads) for heads in record)
    assert all(a != 1.5 for heads in train["alpha"][-1] for a in heads)  # the gradient reaches alpha
    for measure in ("zero_fraction", "block_sparsity"):
        assert all(len(s) == 2 and all(0 <= x <= 1 for x in s) for s in held_out[measure])
    assert_png(tmp_path / "alpha" / "alphas.png")


# -- inspect_rewrites.py ------------------------------------------------------------------------

def test_inspect_rewrites_reports_sites_reasons_and_graphs(tmp_path):
    out = run_example("inspect_rewrites.py", "--dump", "graphs", cwd=tmp_path).stdout
    sections = dict(re.findall(r"=== (\S+) ===\n(.*?)(?=\n=== |\Z)", out, flags=re.S))
    rewritten = {"llama", "qwen2", "qwen3", "gpt2", "bert"}
    left_alone = {"llama-output-attentions": "another use", "gemma2-softcap": "tanh"}
    assert set(sections) == rewritten | set(left_alone)
    for name in rewritten:
        text = sections[name]
        assert "2 of 2 attention sites rewritten" in text
        assert len(re.findall(r"^rewritten: ", text, flags=re.M)) == 2 and "left alone:" not in text
        plus = [line for line in text.splitlines() if line.startswith("+")]
        minus = [line for line in text.splitlines() if line.startswith("-") and not line.startswith("---")]
        assert any("torch.ops.adasplash.entmax_attention" in line for line in plus)
        assert any("softmax" in line or "scaled_dot_product_attention" in line for line in minus)
        after = (tmp_path / "graphs" / name).glob("graph_*_after.py")
        assert any("adasplash.entmax_attention" in f.read_text() for f in after)
    assert "mask bool" in sections["bert"]  # the padding mask is kept
    for name, reason in left_alone.items():
        text = sections[name]
        assert "0 of 2 attention sites rewritten" in text
        reasons = re.findall(r"^left alone: .*", text, flags=re.M)
        assert len(reasons) == 2 and all(reason in r for r in reasons), reasons
        assert "softmax" in text.split("left alone: the graph around it ---")[1]
        for f in (tmp_path / "graphs" / name).glob("graph_*_after.py"):
            assert "adasplash.entmax" not in f.read_text()


# -- quickstart.py (the README's main command) --------------------------------------------------

def test_quickstart_runs_and_matches_the_eager_entmax_model(tmp_path):
    out = run_example("quickstart.py", cwd=tmp_path).stdout
    assert "2 of 2 attention sites rewritten" in out
    eager = re.search(r"compiled vs eager entmax model: .*?difference (\S+) \(logits\), (\S+) \(gradients\)", out)
    softmax = re.search(r"compiled vs softmax model: .*?difference (\S+) \(logits\)", out)
    sparsity = re.search(r"attention sparsity: (\S+)%", out)
    assert eager and softmax and sparsity, out
    assert float(eager[1]) < 1e-4 and float(eager[2]) < 1e-4
    assert float(softmax[1]) > 1e-2
    assert 0 < float(sparsity[1]) < 100 and not math.isnan(float(sparsity[1]))
