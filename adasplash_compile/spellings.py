"""What a node of Dynamo's torch-level FX graph means, whatever the spelling.

Dynamo records calls as written: ``x.softmax(-1)``, ``F.softmax(x, dim=-1)`` and
``torch.softmax(x, -1)`` are three different nodes; ``a @ b`` is ``operator.matmul``; ``k.mT`` is
``getattr(k, "mT")``. ``parse(node)`` maps each spelling to one canonical ``Call``: a kind
("softmax") and its arguments bound by parameter name, defaults filled in.
"""

from __future__ import annotations

import builtins
import operator
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch.fx import Node

import lowering  # noqa: F401  (registers torch.ops.adasplash)

from . import marking  # noqa: F401  (registers torch.ops.adasplash_compile.head_alpha)

_REQUIRED = object()


@dataclass(frozen=True)
class Signature:
    kind: str
    params: tuple  # parameter names, the input tensor first
    defaults: tuple = ()  # (name, value) pairs for trailing optional parameters
    variadic: bool = False  # extra positional arguments are collected into the last parameter


def _sig(kind, *params, variadic=False, **defaults):
    return Signature(kind, params, tuple(defaults.items()), variadic)


_MATMUL = _sig("matmul", "input", "other")
_SOFTMAX = _sig("softmax", "input", "dim", dtype=None)
_TRANSPOSE = _sig("transpose", "input", "dim0", "dim1")
_MUL = _sig("mul", "input", "other")
_DIV = _sig("div", "input", "other", rounding_mode=None)
_ADD = _sig("add", "input", "other", alpha=1)
_MASKED_FILL = _sig("masked_fill", "input", "mask", "value")
_CAST = _sig("cast", "input", "args", variadic=True)
_SHAPE = _sig("reshape", "input", "shape", variadic=True)
_EXPAND = _sig("expand", "input", "sizes", variadic=True)

# call_function targets
_FUNCTIONS: dict[Any, Signature] = {
    torch.matmul: _MATMUL,
    operator.matmul: _MATMUL,
    torch.bmm: _MATMUL,
    torch.einsum: _sig("einsum", "equation", "operands", variadic=True),
    F.softmax: _sig("softmax", "input", dim=None, _stacklevel=3, dtype=None),
    torch.softmax: _SOFTMAX,
    torch.special.softmax: _SOFTMAX,
    torch.ops.adasplash.entmax: _sig("entmax", "input", alpha=1.5, alpha_tensor=None, dim=-1),
    torch.ops.adasplash.entmax.default: _sig("entmax", "input", alpha=1.5, alpha_tensor=None, dim=-1),
    torch.ops.adasplash_compile.head_alpha.default: _sig("head_alpha", "input"),
    torch._C._nn.scaled_dot_product_attention: _sig(
        "sdpa", "query", "key", "value", attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
        enable_gqa=False),
    F.multi_head_attention_forward: _sig("mha", "args", variadic=True),
    torch.transpose: _TRANSPOSE,
    torch.swapaxes: _TRANSPOSE,
    torch.swapdims: _TRANSPOSE,
    torch.permute: _sig("permute", "input", "dims"),
    operator.mul: _MUL,
    operator.imul: _MUL,
    torch.mul: _MUL,
    operator.truediv: _DIV,
    operator.itruediv: _DIV,
    torch.div: _DIV,
    torch.true_divide: _DIV,
    operator.add: _ADD,
    operator.iadd: _ADD,
    torch.add: _ADD,
    torch.masked_fill: _MASKED_FILL,
    torch.where: _sig("where", "condition", "input", "other"),
    operator.invert: _sig("not", "input"),
    torch.logical_not: _sig("not", "input"),
    torch.bitwise_not: _sig("not", "input"),
    F.dropout: _sig("dropout", "input", p=0.5, training=True, inplace=False),
    torch.dropout: _sig("dropout", "input", "p", "training"),
    torch.full: _sig("full", "size", "fill_value", dtype=None, layout=None, device=None,
                     pin_memory=None, requires_grad=False),
    torch.tensor: _sig("tensor", "data", dtype=None, device=None, requires_grad=False, pin_memory=False),
    torch.scalar_tensor: _sig("tensor", "data", dtype=None, layout=None, device=None, pin_memory=None),
    torch.unsqueeze: _sig("unsqueeze", "input", "dim"),
    torch.reshape: _sig("reshape", "input", "shape"),
    torch.flatten: _sig("reshape", "input", start_dim=0, end_dim=-1),
    torch.repeat_interleave: _sig("repeat_interleave", "input", "repeats", dim=None, output_size=None),
    operator.getitem: _sig("getitem", "input", "index"),
}
if hasattr(torch, "_transformer_encoder_layer_fwd"):
    _FUNCTIONS[torch._transformer_encoder_layer_fwd] = _sig("encoder_layer_fastpath", "args",
                                                            variadic=True)

# call_method targets (the tensor is the first argument)
_METHODS: dict[str, Signature] = {
    "matmul": _MATMUL, "bmm": _MATMUL,
    "softmax": _SOFTMAX,
    "transpose": _TRANSPOSE, "swapaxes": _TRANSPOSE, "swapdims": _TRANSPOSE,
    "permute": _sig("permute", "input", "dims", variadic=True),
    "mul": _MUL, "mul_": _MUL,
    "div": _DIV, "div_": _DIV, "true_divide": _DIV,
    "add": _ADD, "add_": _ADD,
    "masked_fill": _MASKED_FILL, "masked_fill_": _MASKED_FILL,
    "where": _sig("where_method", "input", "condition", "other"),
    "logical_not": _sig("not", "input"), "bitwise_not": _sig("not", "input"),
    **{name: _CAST for name in ("to", "type", "type_as", "float", "half", "bfloat16", "double",
                                "contiguous", "clone")},
    "unsqueeze": _sig("unsqueeze", "input", "dim"),
    "view": _SHAPE, "reshape": _SHAPE,
    "flatten": _sig("reshape", "input", start_dim=0, end_dim=-1),
    "expand": _EXPAND, "repeat": _EXPAND,
    "expand_as": _sig("expand", "input", "other"),
    "repeat_interleave": _sig("repeat_interleave", "input", "repeats", dim=None, output_size=None),
}


@dataclass(frozen=True)
class Call:
    """A node read as one canonical operation: ``kind`` and its arguments by parameter name."""

    kind: str
    node: Node
    args: dict

    def __getitem__(self, name: str):
        return self.args[name]

    @property
    def input(self):
        return self.args.get("input")


def _signature(node: Node) -> Optional[Signature]:
    if node.op == "call_function":
        if node.target is builtins.getattr and len(node.args) == 2 and node.args[1] == "mT":
            return Signature("transpose", ("input",), (("dim0", -2), ("dim1", -1)))
        try:
            return _FUNCTIONS.get(node.target)
        except TypeError:  # unhashable target
            return None
    if node.op == "call_method":
        return _METHODS.get(node.target)
    return None


def parse(node: Node) -> Optional[Call]:
    """The canonical ``Call`` of a node, or None for anything this module does not know."""
    sig = _signature(node)
    if sig is None:
        return None
    args = node.args[:1] if node.target is builtins.getattr else node.args
    bound: dict = {}
    positional = list(args)
    if sig.variadic:
        head = positional[: len(sig.params) - 1]
        tail = positional[len(sig.params) - 1:]
        positional = head + [tuple(tail)]
    names = sig.params + tuple(name for name, _ in sig.defaults)
    if len(positional) > len(names):
        return None
    bound.update(zip(names, positional))
    for name, value in node.kwargs.items():
        if name in names:
            bound[name] = value
        elif name != "_stacklevel":
            bound.setdefault("kwargs", {})[name] = value
    for name, value in sig.defaults:
        bound.setdefault(name, value)
    if any(p not in bound for p in sig.params):
        return None
    return Call(sig.kind, node, bound)


def example(arg) -> Any:
    """The fake example value of a node (a tensor or a SymInt), or the constant itself."""
    if isinstance(arg, Node):
        return arg.meta.get("example_value", arg.meta.get("val"))
    return arg


def constant(arg) -> Optional[float]:
    """A Python number: a literal, or a 0-d ``torch.full([], c)`` / ``torch.tensor(c)`` node."""
    if isinstance(arg, (int, float)) and not isinstance(arg, bool):
        return float(arg)
    if isinstance(arg, Node):
        call = parse(arg)
        if call is not None and call.kind == "full" and tuple(call["size"]) == ():
            return constant(call["fill_value"])
        if call is not None and call.kind == "tensor":
            return constant(call["data"])
    return None


def describe(node: Node) -> str:
    """A short name of what a node computes, for reasons in the report."""
    call = parse(node)
    if call is not None and call.kind != "cast":
        return call.kind
    if node.op == "call_method":
        return f".{node.target}()"
    if node.op == "call_function":
        name = getattr(node.target, "__name__", str(node.target))
        return f"{name}()"
    if node.op == "output":
        return "the graph output (returned)"
    return node.op
