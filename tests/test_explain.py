"""explain: one entry per site with its module, pattern, alpha, mask and reason, a readable table,
the graphs before and after the rewrite; graph dumps to a folder during normal compilation."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import adasplash_compile as ac
from compile_helpers import aot, fresh_compile, graph_text  # noqa: F401

B, H, N, D = 2, 4, 8, 16


class Layer(nn.Module):
    def forward(self, q, k, v, mask):
        causal = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        padded = F.scaled_dot_product_attention(causal, k, v, attn_mask=mask, dropout_p=0.0)
        s = (padded @ k.transpose(-2, -1)) * 0.25
        weights = s.softmax(-1)
        return weights @ v, weights


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = Layer()

    def forward(self, q, k, v, mask):
        out, weights = self.layer(q, k, v, mask)
        return out, weights.mean()


def inputs():
    q, k, v = (torch.randn(B, H, N, D) for _ in range(3))
    return q, k, v, torch.rand(B, 1, 1, N) > 0.2


def test_one_entry_per_site_with_its_details():
    report = ac.explain(Model(), *inputs())
    assert [(s.graph, s.module, s.module_type, s.pattern, s.rewritten, s.alpha, s.mask, s.reason)
            for s in report.sites] == [
        (0, "layer", "Layer", "sdpa", True, "1.5", "causal", ""),
        (0, "layer", "Layer", "sdpa", True, "1.5", "bool", ""),
        (0, "layer", "Layer", "softmax", False, "", "",
         "the attention weights have another use (.mean(), matmul): returned, stored or modified"),
    ]
    assert [s.node for s in report.rewritten] == ["causal", "padded"]
    assert [s.node for s in report.left_alone] == ["weights"]


def test_table_lists_every_site():
    text = str(ac.Backend(alpha=2.0).explain(Model(), *inputs()))
    lines = text.splitlines()
    assert lines[0] == "2 of 3 attention sites rewritten in 1 graph(s)"
    assert lines[1].split() == ["graph", "module", "pattern", "rewritten", "alpha", "mask", "dropout", "reason"]
    assert lines[2].split() == ["0", "layer", "sdpa", "yes", "2", "causal", "0", "-"]
    assert lines[4].split()[:4] == ["0", "layer", "softmax", "no"]
    assert lines[4].endswith("returned, stored or modified")


def test_graphs_before_and_after():
    (graph,) = ac.explain(Model(), *inputs()).graphs
    before, after = graph_text(graph.before), graph_text(graph.after)
    assert before.count("scaled_dot_product_attention(") == 2
    assert "entmax_attention" not in before
    assert "scaled_dot_product_attention(" not in after
    assert after.count("torch.ops.adasplash.entmax_attention.default(") == 2
    assert "softmax" in after


def test_each_graph_of_a_graph_break_is_reported():
    def f(q, k, v):
        a = F.scaled_dot_product_attention(q, k, v)
        torch._dynamo.graph_break()
        return F.scaled_dot_product_attention(a, k, v, is_causal=True)

    report = ac.explain(f, *inputs()[:3])
    assert [(s.graph, s.mask) for s in report.sites] == [(0, "none"), (1, "causal")]
    assert [g.index for g in report.graphs] == [0, 1]


def test_dump_dir_writes_each_graph_and_its_table(tmp_path):
    q, k, v, mask = inputs()
    torch.compile(Model(), backend=ac.Backend(compiler="eager", dump_dir=tmp_path))(q, k, v, mask)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 3 and len({n.rsplit("_", 1)[0] for n in names}) == 1
    texts = {n.rsplit("_", 1)[1]: (tmp_path / n).read_text() for n in names}
    assert "entmax_attention" not in graph_text(texts["before.py"])
    assert "torch.ops.adasplash.entmax_attention.default(" in texts["after.py"]
    assert texts["sites.txt"].startswith("2 of 3 attention sites rewritten")


def test_dump_dir_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ADASPLASH_DUMP_DIR", str(tmp_path / "dumps"))
    torch.compile(Model(), backend=aot())(*inputs())
    assert len(list((tmp_path / "dumps").glob("graph_*_after.py"))) == 1


def test_no_graph_is_an_error_not_an_empty_report():
    with pytest.raises(RuntimeError, match="torch.compile captured no graph"):
        ac.explain(lambda n: n + 1, 3)
