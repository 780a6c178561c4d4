"""The FX pass: every attention site of a Dynamo graph becomes one ``entmax_attention`` call.

``rewrite(gm, alpha, scope, index)`` finds the sites (``patterns``), decides which to rewrite
(scope and ``sparse_attention`` markings), emits the op in place of each, and returns a
``GraphReport``. New nodes copy the anchor's metadata and get fake ``example_value``s, as
Dynamo's own nodes have.
"""

from __future__ import annotations

import math
import operator
from typing import Optional

import torch
from torch.fx import GraphModule, Node

from . import patterns
from .functional import needs_backward
from .marking import enclosing
from .patterns import Match, ModuleMatch, Operand, Skip
from .report import GraphReport, Site
from .spellings import example, parse

_META = ("nn_module_stack", "source_fn_stack", "stack_trace")


class _Emitter:
    """Inserts nodes before ``anchor``, with its metadata and fake example values."""

    def __init__(self, gm: GraphModule, anchor: Node):
        self.graph, self.anchor = gm.graph, anchor
        self.fake_mode = getattr(example(anchor), "fake_mode", None)
        if self.fake_mode is None and isinstance(example(anchor), tuple):  # a module call's outputs
            self.fake_mode = getattr(example(anchor)[0], "fake_mode", None)

    def _meta(self, node: Node, value) -> Node:
        for key in _META:
            if key in self.anchor.meta:
                node.meta[key] = self.anchor.meta[key]
        if value is not None:
            node.meta["example_value"] = value
        return node

    def _fake(self, fn):
        if self.fake_mode is None:
            return None
        with self.fake_mode:
            return fn()

    def call(self, target, *args, **kwargs) -> Node:
        """A call_function node, or a call_method node when ``target`` is a method name."""
        method = isinstance(target, str)
        with self.graph.inserting_before(self.anchor):
            make = self.graph.call_method if method else self.graph.call_function
            node = make(target, args, kwargs)
        fn = (lambda x, *a, **k: getattr(x, target)(*a, **k)) if method else target
        value = self._fake(lambda: fn(*torch.fx.node.map_arg(args, example),
                                      **torch.fx.node.map_arg(kwargs, example)))
        return self._meta(node, value)

    def negate(self, cond: Node) -> Node:
        """~cond, or x when cond is already ~x."""
        call = parse(cond)
        if call is not None and call.kind == "not":
            return call.input
        return self.call(torch.logical_not, cond)

    def cast(self, node: Node, dtype: torch.dtype) -> Node:
        return node if example(node).dtype == dtype else self.call("to", node, dtype)

    def operand(self, op: Operand) -> Node:
        node = op.node
        for fn, args in op.views:
            node = self.call(fn, node, *args)
        return node


def _combine(em: _Emitter, nodes: list, fn) -> Optional[Node]:
    out = None
    for n in nodes:
        out = n if out is None else em.call(fn, out, n)
    return out


def _mask(em: _Emitter, plan: patterns.MaskPlan) -> Optional[Node]:
    """bool keep-mask, additive float mask, or where(keep, float mask, -inf)."""
    keeps = [c if keep_when else em.negate(c) for c, keep_when in plan.keep]
    keep = _combine(em, keeps, torch.logical_and)
    add = _combine(em, plan.additive, operator.add)
    if keep is not None and add is not None:
        return em.call(torch.where, keep, add, -math.inf)
    return keep if keep is not None else add


def _alpha(em: _Emitter, alpha):
    """(alpha float, head_alpha node or None) for the op."""
    if isinstance(alpha, float):
        return alpha, None
    return 1.5, em.operand(alpha)


def emit_attention(gm: GraphModule, m: Match) -> None:
    em = _Emitter(gm, m.anchor)
    q, k, v = em.operand(m.q), em.operand(m.k), em.operand(m.v)
    mask = _mask(em, m.mask)
    alpha, head_alpha = _alpha(em, m.alpha)
    seed = None
    if m.dropout_p > 0:
        seed = em.call(torch.randint, 0, 2**31 - 1, (1,), dtype=torch.int64, device=example(q).device)
    # the backward's u_shift where autograd will record the call (grad mode is guarded by Dynamo)
    for_backward = needs_backward(*(example(x) for x in (q, k, v)))
    res = em.call(torch.ops.adasplash.entmax_attention.default, q, k, v, mask, float(m.dropout_p),
                  m.is_causal, m.scale, alpha, head_alpha, seed, for_backward)
    out = em.call(operator.getitem, res, 0)
    if m.mask.uniform_rows is not None:
        # Rows the finite fill masks entirely are constant: softmax and entmax are uniform there.
        fill = m.mask.uniform_rows
        masked = fill.cond if fill.masked_when else em.negate(fill.cond)
        all_masked = em.call(torch.all, masked, -1, keepdim=True)
        v_mean = em.call(torch.mean, em.operand(m.v_full), -2, keepdim=True)
        out = em.call(torch.where, all_masked, em.cast(v_mean, example(out).dtype), out)
    for fn, args in m.out_views:
        out = em.call(fn, out, *args)
    out = em.cast(out, example(m.anchor).dtype)
    m.anchor.replace_all_uses_with(out)
    _erase_unused(gm, m.nodes)


def emit_module_call(gm: GraphModule, m: ModuleMatch) -> None:
    em = _Emitter(gm, m.anchor)
    alpha, head_alpha = _alpha(em, m.alpha)
    node = em.call(m.target, *m.anchor.args, **m.anchor.kwargs, alpha=alpha, head_alpha=head_alpha)
    m.anchor.replace_all_uses_with(node)
    _erase_unused(gm, [m.anchor])


def _erase_unused(gm: GraphModule, nodes: list) -> None:
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for n in sorted(set(nodes), key=lambda n: -order.get(n, -1)):
        if n in order and not n.users and n.op in ("call_function", "call_method"):
            gm.graph.erase_node(n)


def _describe_alpha(alpha) -> str:
    if isinstance(alpha, float):
        return f"{alpha:g}"
    return f"tensor{tuple(example(alpha.node).shape)}"


def rewrite(gm: GraphModule, alpha: float = 1.5, scope: str = "all", index: int = 0,
            graphs: bool = True) -> GraphReport:
    """Rewrite the attention sites of ``gm`` in place; returns what was found (with the readable
    graph before and after when ``graphs``)."""
    before = gm.print_readable(print_output=False) if graphs else ""
    markers = [n for n in gm.graph.nodes if getattr(parse(n), "kind", None) == "head_alpha"]
    marked_alphas = {enclosing(n)[2]: n.args[0] for n in markers}
    sites = []
    for node in list(gm.graph.nodes):
        if node.graph is not gm.graph:  # erased by an earlier rewrite
            continue
        call = parse(node)
        if call is not None and call.kind in _PATTERN_NAMES:
            sites.append(_site(gm, call, alpha, scope, index, marked_alphas))
    _erase_unused(gm, markers)
    if markers or any(s.rewritten for s in sites):
        gm.graph.lint()
        gm.recompile()
    after = gm.print_readable(print_output=False) if graphs else ""
    return GraphReport(index, before, after, sites)


# Anchor kinds and the pattern name a site gets when it is left alone.
_PATTERN_NAMES = {"softmax": "softmax", "entmax": "entmax", "sdpa": "sdpa",
                  "mha": "multi_head_attention_forward",
                  "encoder_layer_fastpath": "transformer_encoder_layer_fwd"}


def _match(call, alpha, where: str):
    if example(call.node) is None:
        raise Skip("the graph has no example values (shapes) for this node")
    if call.kind in ("mha", "encoder_layer_fastpath"):
        return patterns.match_module_call(call, alpha, where)
    if call.kind == "sdpa":
        return patterns.match_sdpa(call, alpha, where)
    return patterns.match_normalizer(call, alpha, where)


def _site(gm: GraphModule, call, default_alpha: float, scope: str, index: int,
          marked_alphas: dict) -> Site:
    """Decide, match and rewrite one site."""
    marking, marked, path, module_type = enclosing(call.node)
    where = path or "the top level"
    left_alone = dict(graph=index, node=call.node.name, module=path, module_type=module_type,
                      pattern=_PATTERN_NAMES[call.kind], rewritten=False)
    if marking is not None and not marking.enabled:
        return Site(**left_alone, reason=f"excluded by sparse_attention(enabled=False) on {where}")
    if scope == "marked" and marking is None:
        return Site(**left_alone,
                    reason="not inside a module marked with sparse_attention (scope='marked')")
    alpha = default_alpha
    if marking is not None and isinstance(marking.alpha, float):
        alpha = marking.alpha
    elif marking is not None and marking.alpha is not None:
        if marked not in marked_alphas:
            return Site(**left_alone, reason=f"the alpha tensor of sparse_attention on {marked} is not "
                                             f"in this graph (a graph break inside the module?)")
        alpha = patterns.MarkedAlpha(marked_alphas[marked])
    try:
        m = _match(call, alpha, where)
    except Skip as skip:
        return Site(**left_alone, reason=str(skip))
    except patterns.MarkingError:
        raise
    except Exception as error:  # matching only reads the graph: leave the site as it is
        return Site(**left_alone, reason=f"not understood by the pass ({type(error).__name__}: {error})")
    info = dict(left_alone, pattern=m.pattern, rewritten=True, alpha=_describe_alpha(m.alpha))
    if isinstance(m, ModuleMatch):
        emit_module_call(gm, m)
        return Site(**info)
    emit_attention(gm, m)
    return Site(**info, mask=m.mask.kind(m.is_causal), dropout=m.dropout_p)
