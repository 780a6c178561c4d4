"""What the pass found: one ``Site`` per attention site, grouped by compiled graph.

``str(report)`` is a table; ``GraphReport.before`` / ``after`` hold the readable FX code of
the graph before and after the rewrite.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Site:
    """One softmax / SDPA / attention-module site of a graph.

    pattern: how it is written ("matmul-softmax", "sdpa", "multi_head_attention_forward", ...).
    reason: why it was left alone ("" when rewritten). mask: "none", "causal", "bool", "float",
    "fill(v)" or a "+"-joined combination.
    """

    graph: int
    node: str
    module: str
    module_type: str
    pattern: str
    rewritten: bool
    reason: str = ""
    alpha: str = ""
    mask: str = ""
    dropout: float = 0.0


@dataclass
class GraphReport:
    """One compiled graph: its index, FX code ``before`` and ``after`` the pass, and its sites."""

    index: int
    before: str
    after: str
    sites: list = field(default_factory=list)


_COLUMNS = ("graph", "module", "pattern", "rewritten", "alpha", "mask", "dropout", "reason")


@dataclass
class Report:
    """Sites of every graph Dynamo compiled, in order."""

    graphs: list = field(default_factory=list)

    @property
    def sites(self) -> list:
        """Every site of every graph."""
        return [s for g in self.graphs for s in g.sites]

    @property
    def rewritten(self) -> list:
        """The sites replaced by ``torch.ops.adasplash.entmax_attention``."""
        return [s for s in self.sites if s.rewritten]

    @property
    def left_alone(self) -> list:
        """The sites kept as they were; each ``Site.reason`` says why."""
        return [s for s in self.sites if not s.rewritten]

    def __str__(self) -> str:
        rows = [_COLUMNS] + [
            (str(s.graph), s.module or "-", s.pattern, "yes" if s.rewritten else "no", s.alpha or "-",
             s.mask or "-", f"{s.dropout:g}", s.reason or "-")
            for s in self.sites
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS) - 1)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]
        summary = (f"{len(self.rewritten)} of {len(self.sites)} attention sites rewritten in "
                   f"{len(self.graphs)} graph(s)")
        return "\n".join([summary] + lines)
