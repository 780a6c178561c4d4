"""Attention sites of a Dynamo graph, read as one ``entmax_attention`` call each.

Three pattern families, each matched from one anchor node:

- ``F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa)``
  maps argument for argument.
- A normaliser between two products, written in plain PyTorch as::

      s = q @ k.transpose(-2, -1)          # or matmul / bmm / einsum, k.mT, permute
      s = s * scale                        # any number of constant * or /, or none
      s = s + mask                         # any of: + float mask, .masked_fill(cond, -inf),
                                           #   torch.where(keep, s, -inf); casts anywhere
      p = s.softmax(-1)                    # any spelling, dtype=float32 allowed; or
                                           #   adasplash_compile.entmax(s, alpha, dim=-1)
      p = F.dropout(p.to(v.dtype), drop)   # optional cast and dropout (train or eval)
      out = p @ v                          # or matmul / bmm / einsum

- Module calls Dynamo keeps whole (``nn.MultiheadAttention``, the inference fast path of
  ``nn.TransformerEncoderLayer``) are replaced by their ``module_calls`` counterparts.

Each matcher returns a ``Match`` (what to emit) or raises ``Skip`` with the reason the site is left
alone. ``repeat_kv``-style expansions of k and v are folded into grouped-query attention.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch
from torch.fx import Node

from . import module_calls
from .spellings import Call, constant, describe, example, parse

# A finite fill value at or below this is treated as "masked" (see ``mask_plan``).
FILL_LIMIT = -1e4


class Skip(Exception):
    """A site that is left alone; the message says why."""


class MarkingError(ValueError):
    """A ``sparse_attention`` marking that does not fit the attention it marks."""


# One view op to apply to a tensor: (torch function, extra args).
View = tuple


@dataclass
class Operand:
    """A graph tensor and the view ops that bring it to the op's layout."""

    node: Node
    views: tuple = ()

    def then(self, *views: View) -> "Operand":
        return Operand(self.node, self.views + views)


@dataclass
class Fill:
    """Scores replaced by ``value`` where ``cond == masked_when`` (masked_fill / torch.where)."""

    cond: Node
    masked_when: bool
    value: float


@dataclass
class MaskPlan:
    """The op's attn_mask: additive float terms, bool keep-masks (True = attend), and, for one
    finite fill, the condition whose all-masked rows get the mean of v (softmax of a constant
    row is uniform)."""

    additive: list = field(default_factory=list)
    keep: list = field(default_factory=list)  # (cond node, keep_when) pairs
    uniform_rows: Optional[Fill] = None

    def kind(self, is_causal: bool) -> str:
        parts = (["causal"] if is_causal else []) + (["bool"] if self.keep else []) + \
            (["float"] if self.additive else [])
        if self.uniform_rows is not None:
            parts.append(f"fill({self.uniform_rows.value:g})")
        return "+".join(parts) or "none"


@dataclass
class Match:
    """One ``entmax_attention`` call to emit in place of ``anchor``."""

    pattern: str
    anchor: Node
    q: Operand
    k: Operand
    v: Operand
    mask: MaskPlan
    is_causal: bool
    scale: Optional[float]
    dropout_p: float
    alpha: Union[float, "Operand"]
    out_views: tuple = ()
    v_full: Optional[Operand] = None  # v before GQA folding, for the uniform-rows fix-up
    nodes: list = field(default_factory=list)  # nodes of the site, erased once unused


# ----------------------------------------------------------------------------------------------
# Products: q @ k^T and p @ v in any spelling, as (batch..., m, c) @ (batch..., c, n).
# ----------------------------------------------------------------------------------------------


@dataclass
class Product:
    node: Node
    lhs: Operand  # (batch..., m, c)
    rhs: Operand  # (batch..., c, n)
    rhs_t: Operand  # rhs transposed: (batch..., n, c)
    out_views: tuple  # from (batch..., m, n) to the node's layout
    nodes: list


def _transpose_source(node: Node) -> Optional[Node]:
    """x when node is x.transpose(-2, -1) (any spelling) of a tensor of rank >= 2."""
    call = parse(node)
    if call is None:
        return None
    val = example(node)
    if call.kind == "transpose" and isinstance(call["dim0"], int) and isinstance(call["dim1"], int):
        dims = {call["dim0"] % val.dim(), call["dim1"] % val.dim()}
        return call.input if dims == {val.dim() - 2, val.dim() - 1} else None
    if call.kind == "permute":
        dims = call["dims"]
        dims = tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (list, tuple)) else tuple(dims)
        n = len(dims)
        expected = tuple(range(n - 2)) + (n - 1, n - 2)
        return call.input if n >= 2 and tuple(d % n for d in dims) == expected else None
    return None


def _permute(order: list, current: list) -> tuple:
    """The view op that permutes dims labelled ``current`` into ``order`` (none if equal)."""
    if order == current:
        return ()
    return ((torch.permute, (tuple(current.index(x) for x in order),)),)


def as_product(node: Node) -> Optional[Product]:
    """node as a batched matrix product, or None."""
    call = parse(node)
    if call is None:
        return None
    if call.kind == "matmul":
        a, b = call["input"], call["other"]
        if not (isinstance(a, Node) and isinstance(b, Node)):
            return None
        if example(a).dim() < 2 or example(b).dim() < 2:
            return None
        src = _transpose_source(b)
        rhs_t = Operand(src) if src is not None else Operand(b, ((torch.transpose, (-2, -1)),))
        return Product(node, Operand(a), Operand(b), rhs_t, (), [b] if src is not None else [])
    if call.kind == "einsum":
        return _einsum_product(call)
    return None


def _einsum_product(call: Call) -> Optional[Product]:
    ops = call["operands"]
    if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
        ops = tuple(ops[0])
    eq = call["equation"]
    if len(ops) != 2 or not isinstance(eq, str) or "->" not in eq or "." in eq:
        return None
    ins, out = eq.replace(" ", "").split("->")
    ins = ins.split(",")
    if len(ins) != 2:
        return None
    a, b, o = (list(s) for s in (ins[0], ins[1], out))
    if any(len(set(s)) != len(s) for s in (a, b, o)):
        return None
    batch = [x for x in a if x in b and x in o]
    m = [x for x in a if x not in b and x in o]
    n = [x for x in b if x not in a and x in o]
    c = [x for x in a if x in b and x not in o]
    if len(m) != 1 or len(n) != 1 or len(c) != 1 or len(batch) + 3 != len(set(a + b + o)):
        return None
    lhs = Operand(ops[0], _permute(batch + m + c, a))
    rhs = Operand(ops[1], _permute(batch + c + n, b))
    rhs_t = Operand(ops[1], _permute(batch + n + c, b))
    return Product(call.node, lhs, rhs, rhs_t, _permute(o, batch + m + n), [])


# ----------------------------------------------------------------------------------------------
# The scores: s = scale * (q @ k^T) with mask terms, walked back from the normaliser's input.
# ----------------------------------------------------------------------------------------------


@dataclass
class Scores:
    product: Product
    scale: float = 1.0
    terms: list = field(default_factory=list)  # in order of application: Node (added) or Fill
    nodes: list = field(default_factory=list)


def _same_shape(a: Node, b: Node) -> bool:
    return tuple(example(a).shape) == tuple(example(b).shape)


def _is_cast(call: Optional[Call], src: Node) -> bool:
    """A dtype cast / copy that keeps shape and device (.to(dtype), .float(), .contiguous()...)."""
    if call is None or call.kind != "cast" or call.input is not src:
        return False
    a, b = example(call.node), example(src)
    return isinstance(a, torch.Tensor) and a.shape == b.shape and a.device == b.device


def scores(node: Node, *, first: bool = True) -> Scores:
    """Walk back from the normaliser's input to the q @ k^T product."""
    if len(node.users) != 1:
        others = ", ".join(sorted(describe(u) for u in node.users))
        raise Skip(f"the scores are also used elsewhere ({others})")
    product = as_product(node)
    if product is not None:
        return Scores(product, nodes=product.nodes + [node])
    call = parse(node)
    if call is None:
        if first:
            raise Skip(f"the softmax input comes from {describe(node)}, not from a q @ k^T product")
        raise Skip(f"the scores pass through {describe(node)} before the softmax")
    kind = call.kind
    if _is_cast(call, call.input):
        s = scores(call.input, first=False)
    elif kind in ("mul", "div"):
        s = _scaled(call)
    elif kind == "add":
        s = _added(call)
    elif kind == "masked_fill":
        s = _filled(call, call.input, call["mask"], True, call["value"])
    elif kind in ("where", "where_method"):
        s = _where(call, call["condition"], call["input"], call["other"])
    else:
        raise Skip(f"the scores pass through {describe(node)} before the softmax")
    s.nodes.append(node)
    return s


def _scaled(call: Call) -> Scores:
    a, b = call["input"], call["other"]
    if call.kind == "div" and call.args.get("rounding_mode") is not None:
        raise Skip("the scores are divided with a rounding mode")
    chain, factor = (a, b) if isinstance(a, Node) and constant(b) is not None else (b, a)
    c = constant(factor)
    if c is None or not isinstance(chain, Node) or (call.kind == "div" and chain is not a):
        raise Skip(f"the scores are scaled by a tensor ({describe(b) if isinstance(b, Node) else b}), "
                   f"not a constant")
    s = scores(chain, first=False)
    if any(isinstance(t, Node) for t in s.terms):
        raise Skip("the scores are scaled after a float mask is added")
    if c == 0 or not math.isfinite(c):
        raise Skip(f"the scores are scaled by {c}")
    s.scale *= c if call.kind == "mul" else 1.0 / c
    s.nodes += [factor] if isinstance(factor, Node) else []
    return s


def _added(call: Call) -> Scores:
    if call.args.get("alpha", 1) != 1:
        raise Skip("torch.add with alpha != 1 on the scores")
    a, b = call["input"], call["other"]
    if not (isinstance(a, Node) and isinstance(b, Node)):
        raise Skip("a constant is added to the scores")
    try:
        s, term = scores(a, first=False), b
    except Skip as first_reason:
        try:
            s, term = scores(b, first=False), a
        except Skip:
            raise first_reason from None
    chain = s.nodes[-1]
    if not _same_shape(call.node, chain):
        raise Skip("the mask broadcasts the scores to a larger shape")
    if not example(term).is_floating_point():
        raise Skip("a non-floating tensor is added to the scores")
    s.terms.append(term)
    return s


def _filled(call: Call, chain, cond, masked_when: bool, value) -> Scores:
    v = constant(value)
    if v is None:
        raise Skip(f"the scores are filled with a tensor ({describe(value)}), not a constant")
    if not isinstance(chain, Node) or not isinstance(cond, Node) or example(cond).dtype != torch.bool:
        raise Skip("masked_fill / torch.where on the scores with a non-bool condition")
    if math.isnan(v) or v > FILL_LIMIT:
        raise Skip(f"the scores are filled with {v:g}: only -inf or a value <= {FILL_LIMIT:g} masks a "
                   f"score exactly")
    s = scores(chain, first=False)
    if not _same_shape(call.node, s.nodes[-1]):
        raise Skip("the mask broadcasts the scores to a larger shape")
    s.terms.append(Fill(cond, masked_when, v))
    s.nodes += [cond] + ([value] if isinstance(value, Node) else [])
    return s


def _where(call: Call, cond, x, y) -> Scores:
    """torch.where(cond, scores, value) keeps scores where cond; (cond, value, scores) the reverse."""
    if constant(y) is not None:
        return _filled(call, x, cond, False, y)
    if constant(x) is not None:
        return _filled(call, y, cond, True, x)
    raise Skip("torch.where on the scores with no constant branch")


def mask_plan(terms: list) -> MaskPlan:
    """The op's mask for the mask terms of the scores, in order of application.

    -inf fills become bool keep-masks and float tensors additive masks, in any order
    (-inf + b = -inf). A finite fill value v (<= FILL_LIMIT) masks exactly as -inf where the row
    keeps a score above v + 1/(alpha - 1), entmax giving those entries p = 0; a row it masks
    entirely is constant, so its output is the mean of v. That needs the fill to be the only term.
    """
    plan = MaskPlan()
    for t in terms:
        if isinstance(t, Node):
            plan.additive.append(t)
        elif t.value == -math.inf:
            plan.keep.append((t.cond, not t.masked_when))
        elif len(terms) == 1:
            plan.keep.append((t.cond, not t.masked_when))
            plan.uniform_rows = t
        else:
            raise Skip(f"a finite fill ({t.value:g}) combined with other mask terms")
    return plan


# ----------------------------------------------------------------------------------------------
# The attention weights: p -> casts, dropout -> p @ v.
# ----------------------------------------------------------------------------------------------


def weights(p: Node):
    """Follow p to its product with v: (Product, dropout_p, nodes in between)."""
    cur, dropout_p, nodes = p, 0.0, []
    while True:
        users = list(cur.users)
        if len(users) != 1:
            uses = ", ".join(sorted(describe(u) for u in users)) or "none"
            raise Skip(f"the attention weights have another use ({uses}): returned, stored or "
                       f"modified")
        user = users[0]
        call = parse(user)
        if _is_cast(call, cur):
            pass
        elif call is not None and call.kind == "dropout" and call.input is cur:
            p_drop, training = constant(call["p"]), call["training"]
            if p_drop is None or not isinstance(training, bool):
                raise Skip("dropout on the attention weights with a non-constant p or training flag")
            if training and p_drop > 0:
                if dropout_p > 0:
                    raise Skip("two dropouts on the attention weights")
                dropout_p = p_drop
        else:
            product = as_product(user)
            if product is not None and product.lhs.node is cur and not product.lhs.views:
                return product, dropout_p, nodes
            if call is not None and call.kind == "mul":
                raise Skip("the attention weights are multiplied by a tensor (a head mask?)")
            raise Skip(f"the attention weights pass through {describe(user)} before the product "
                       f"with v")
        nodes.append(user)
        cur = user


# ----------------------------------------------------------------------------------------------
# Operands: layout checks and repeat_kv folding.
# ----------------------------------------------------------------------------------------------

_VIEW_KINDS = ("getitem", "unsqueeze", "reshape")


def _unsqueezed_at_2(node: Node) -> Optional[Node]:
    """x when node is x[:, :, None] / x.unsqueeze(2) / a reshape inserting a size-1 dim 2."""
    call = parse(node)
    if call is None or call.kind not in _VIEW_KINDS or not isinstance(call.input, Node):
        return None
    if call.kind == "getitem":
        index = call["index"]
        if not isinstance(index, tuple) or any(
                not (i is None or i is Ellipsis or isinstance(i, slice)) for i in index):
            return None
    x, u = example(call.input), example(node)
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        return None
    want = tuple(x.shape[:2]) + (1,) + tuple(x.shape[2:])
    return call.input if tuple(u.shape) == want else None


def fold_repeat_kv(node: Node) -> tuple:
    """(x, nodes) when node repeats each head of x (B, Hkv, N, D) n times along dim 1:
    ``x[:, :, None].expand(B, Hkv, n, N, D).reshape(B, Hkv * n, N, D)``,
    ``x.repeat_interleave(n, dim=1)`` or, for Hkv = 1, ``x.expand(B, H, N, D)``; else (node, [])."""
    call = parse(node)
    out = example(node)
    if call is None or not isinstance(out, torch.Tensor) or out.dim() != 4:
        return node, []
    x = call.input
    if not isinstance(x, Node):
        return node, []
    if call.kind == "repeat_interleave":
        dim = call["dim"]
        if isinstance(call["repeats"], int) and dim is not None and dim % 4 == 1:
            return x, [node]
        return node, []
    if call.kind == "expand":
        xv = example(x)
        if xv.dim() == 4 and xv.shape[1] == 1 and tuple(xv.shape[2:]) == tuple(out.shape[2:]) \
                and xv.shape[0] == out.shape[0]:
            return x, [node]
        return node, []
    if call.kind != "reshape":
        return node, []
    rep = parse(x)
    if rep is None or rep.kind != "expand" or not isinstance(rep.input, Node):
        return node, []
    src = _unsqueezed_at_2(rep.input)
    if src is None:
        return node, []
    s, e = example(src), example(x)
    n = e.shape[2]
    if tuple(e.shape) != tuple(s.shape[:2]) + (n,) + tuple(s.shape[2:]):
        return node, []
    if tuple(out.shape) != (s.shape[0], s.shape[1] * n, s.shape[2], s.shape[3]):
        return node, []
    return src, [node, x, rep.input]


def check_layout(q, k, v) -> None:
    """q (B, Hq, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv) with Hq % Hkv == 0."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise Skip(f"q, k, v have ranks {q.dim()}, {k.dim()}, {v.dim()}; the op takes "
                   f"(batch, heads, length, head_dim)")
    if not (q.dtype == k.dtype == v.dtype):
        raise Skip(f"q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise Skip(f"dtype {q.dtype} is not a floating dtype the op takes")
    B, Hq, _, D = q.shape
    if not (k.shape[0] == B and v.shape[0] == B):
        raise Skip(f"q, k, v batch sizes differ ({B}, {k.shape[0]}, {v.shape[0]}): batch broadcasting")
    if k.shape[-1] != D:
        raise Skip(f"k head_dim {k.shape[-1]} differs from q head_dim {D}")
    if k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise Skip(f"k {tuple(k.shape)} and v {tuple(v.shape)} differ in heads or length")
    if Hq % k.shape[1] != 0:
        raise Skip(f"query heads ({Hq}) are not a multiple of key/value heads ({k.shape[1]})")


def _shaped(op: Operand) -> torch.Tensor:
    """The example value of an operand after its views (shapes only)."""
    val = example(op.node)
    for fn, args in op.views:
        val = fn(val, *args)
    return val


def operands(q: Operand, k: Operand, v: Operand):
    """(q, k, v, out_views, folded nodes): rank-3 inputs get a leading batch of 1;
    repeat_kv expansions of k and v are folded when both fold to the same heads."""
    qe, ke, ve = _shaped(q), _shaped(k), _shaped(v)
    out_views: tuple = ()
    if qe.dim() == 3 and ke.dim() == 3 and ve.dim() == 3:
        lift = ((torch.unsqueeze, (0,)),)
        q, k, v = q.then(*lift), k.then(*lift), v.then(*lift)
        qe, ke, ve = (t.unsqueeze(0) for t in (qe, ke, ve))
        out_views = ((torch.squeeze, (0,)),)
    folded: list = []
    if not k.views and not v.views:
        kx, kn = fold_repeat_kv(k.node)
        vx, vn = fold_repeat_kv(v.node)
        if kn and vn and example(kx).shape[1] == example(vx).shape[1]:
            k, v, folded = Operand(kx), Operand(vx), kn + vn
            ke, ve = example(kx), example(vx)
    check_layout(qe, ke, ve)
    return q, k, v, out_views, folded


# ----------------------------------------------------------------------------------------------
# The pattern families.
# ----------------------------------------------------------------------------------------------


def _last_dim(dim, rank: int, what: str) -> None:
    if not isinstance(dim, int) or dim % rank != rank - 1:
        raise Skip(f"{what} over dim {dim}, not the last (key) dim")


def match_normalizer(call: Call, alpha, where: str) -> Match:
    """softmax / adasplash entmax between q @ k^T and @ v; ``alpha`` for softmax sites."""
    rank = example(call.node).dim()
    if call.kind == "softmax":
        _last_dim(call["dim"], rank, "softmax")
    else:
        _last_dim(call["dim"], rank, "entmax")
        alpha = call["alpha_tensor"] if call["alpha_tensor"] is not None else float(call["alpha"])
    s = scores(call.input)
    pv, dropout_p, weight_nodes = weights(call.node)
    plan = mask_plan(s.terms)
    if plan.uniform_rows is not None and dropout_p > 0:
        raise Skip("dropout with a finite fill value: rows with every key masked would differ")
    qk = s.product
    if qk.out_views:
        raise Skip("the q @ k^T einsum does not produce (..., query, key)")
    q, k, v, lift, folded = operands(qk.lhs, qk.rhs_t, pv.rhs)
    spelling = parse(qk.node).kind
    alpha = alpha_operand(alpha, _shaped(q).shape[1], rank, where)
    return Match(
        pattern=f"{spelling}-{call.kind}", anchor=pv.node, q=q, k=k, v=v, mask=plan,
        is_causal=False, scale=s.scale, dropout_p=dropout_p, alpha=alpha,
        out_views=lift + pv.out_views, v_full=pv.rhs.then(*lift) if plan.uniform_rows else None,
        nodes=s.nodes + [call.node] + weight_nodes + [pv.node] + folded,
    )


def match_sdpa(call: Call, alpha, where: str) -> Match:
    """F.scaled_dot_product_attention: the same arguments, with the adasplash alpha."""
    dropout_p, scale = constant(call["dropout_p"]), call["scale"]
    if dropout_p is None:
        raise Skip("scaled_dot_product_attention with a non-constant dropout_p")
    if scale is not None and constant(scale) is None:
        raise Skip("scaled_dot_product_attention with a non-constant scale")
    if not isinstance(call["is_causal"], bool) or not isinstance(call["enable_gqa"], bool):
        raise Skip("scaled_dot_product_attention with a non-constant is_causal or enable_gqa")
    mask = call["attn_mask"]
    if mask is not None and not isinstance(mask, Node):
        raise Skip("scaled_dot_product_attention with a non-tensor attn_mask")
    q, k, v, lift, folded = operands(Operand(call["query"]), Operand(call["key"]),
                                        Operand(call["value"]))
    plan = MaskPlan()
    if mask is not None:
        if example(mask).dim() > 4:
            raise Skip("scaled_dot_product_attention with a mask of rank > 4")
        if example(mask).dtype == torch.bool:
            plan.keep.append((mask, True))
        else:
            plan.additive.append(mask)
    alpha = alpha_operand(alpha, _shaped(q).shape[1], 4, where)
    return Match(
        pattern="sdpa", anchor=call.node, q=q, k=k, v=v, mask=plan,
        is_causal=call["is_causal"], scale=None if scale is None else constant(scale),
        dropout_p=dropout_p, alpha=alpha, out_views=lift, nodes=[call.node] + folded,
    )


@dataclass(frozen=True)
class MarkedAlpha:
    """The tensor alpha of a ``sparse_attention`` marking: the graph input of its marker."""

    node: Node


def alpha_operand(alpha, hq: int, scores_rank: int, where: str):
    """The op's alpha: a float as is; a tensor as an operand of shape (Hq,), one per query head.

    A marking's tensor must have shape (Hq,) (else MarkingError); an entmax alpha tensor must
    broadcast to the scores without the key dim and vary only along the heads.
    """
    if isinstance(alpha, float):
        return alpha
    if isinstance(alpha, MarkedAlpha):
        shape = tuple(example(alpha.node).shape)
        if shape != (hq,):
            raise MarkingError(f"sparse_attention alpha of shape {shape} at {where}: the attention "
                             f"there has {hq} query heads, so alpha must have shape ({hq},)")
        return Operand(alpha.node)
    shape = tuple(example(alpha).shape)
    shape = (1,) * (scores_rank - 1 - len(shape)) + shape
    head = scores_rank - 3
    if len(shape) != scores_rank - 1 or shape[head] not in (1, hq) or any(
            s != 1 for i, s in enumerate(shape) if i != head):
        raise Skip(f"the entmax alpha tensor of shape {tuple(example(alpha).shape)} is not one alpha "
                   f"per head")
    views: tuple = ((torch.reshape, ((-1,),)),)
    if shape[head] != hq:
        views += ((torch.broadcast_to, ((hq,),)),)
    return Operand(alpha, views)


@dataclass
class ModuleMatch:
    """A module-level call to replace by ``target`` (same arguments, plus alpha)."""

    pattern: str
    anchor: Node
    target: Callable
    alpha: Union[float, Operand]


def match_module_call(call: Call, alpha, where: str) -> ModuleMatch:
    """F.multi_head_attention_forward or torch._transformer_encoder_layer_fwd."""
    node = call.node
    if not module_calls.sdpa_by_name():
        raise Skip("this torch's multi_head_attention_forward does not call "
                   "scaled_dot_product_attention by name")
    if call.kind == "mha":
        need_weights = node.kwargs.get("need_weights", node.args[15] if len(node.args) > 15 else True)
        reads_weights = any(u.target is not operator.getitem or u.args[1] != 0 for u in node.users)
        if need_weights and reads_weights:
            raise Skip("need_weights=True and the attention weights are used")
        num_heads, pattern, target = node.args[4], "multi_head_attention_forward", \
            module_calls.multi_head_attention
    else:
        num_heads, pattern, target = node.args[2], "transformer_encoder_layer_fwd", \
            module_calls.encoder_layer
    if not isinstance(num_heads, int):
        raise Skip(f"{pattern} with a non-constant num_heads")
    return ModuleMatch(pattern, node, target, alpha_operand(alpha, num_heads, 4, where))
