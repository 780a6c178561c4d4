"""Marking attention modules: ``sparse_attention`` on a class (decorator) or on an instance.

A marking sets alpha for the attention inside a module, or excludes it (``enabled=False``).
It is stored on the class, which Dynamo records for every node in ``meta["nn_module_stack"]``:
marking an instance gives it a one-off subclass of its class holding the marking (as
``torch.nn.utils.parametrize`` does), so other instances are unaffected. The innermost marked
module around a site decides.

A tensor alpha (one per head, learnable as an ``nn.Parameter``) is registered on the instance as
``adasplash_alpha``; a forward pre-hook passes it, while compiling, to the no-op marker op
``adasplash_compile::head_alpha``, so that it is a graph input the pass can use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn

from .checks import check_alpha

_MARK = "_adasplash_marking"
_BASE = "_adasplash_unmarked_class"
_HOOK = "_adasplash_alpha_hook"
ALPHA_ATTR = "adasplash_alpha"


@torch.library.custom_op("adasplash_compile::head_alpha", mutates_args=())
def head_alpha(alpha: torch.Tensor) -> torch.Tensor:
    """Identity: marks ``alpha`` as the per-head alpha of the module it is called in."""
    return alpha.clone()


@head_alpha.register_fake
def _(alpha):
    return torch.empty_like(alpha)


def _pass_alpha_to_graph(module, args) -> None:
    if torch.compiler.is_compiling():
        head_alpha(getattr(module, ALPHA_ATTR))


def _set_tensor_alpha(module: nn.Module, alpha: Optional[torch.Tensor]) -> None:
    """Register (or, with None, remove) the instance's tensor alpha and its pre-hook."""
    handle = module.__dict__.pop(_HOOK, None)
    if handle is not None:
        handle.remove()
        delattr(module, ALPHA_ATTR)
    if alpha is None:
        return
    if isinstance(alpha, nn.Parameter):
        module.register_parameter(ALPHA_ATTR, alpha)
    else:
        module.register_buffer(ALPHA_ATTR, alpha)
    module.__dict__[_HOOK] = module.register_forward_pre_hook(_pass_alpha_to_graph)


@dataclass(frozen=True)
class Marking:
    """alpha: a float > 1, a (num_heads,) tensor (an ``nn.Parameter`` to learn it), or None for
    the backend's alpha. enabled=False leaves the module's attention as it is."""

    alpha: Union[float, torch.Tensor, None] = None
    enabled: bool = True


def _checked(alpha, enabled) -> Marking:
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {enabled!r}")
    if alpha is None:
        return Marking(None, enabled)
    if isinstance(alpha, torch.Tensor):
        if alpha.dim() != 1:
            raise ValueError(f"alpha as a tensor must have shape (num_heads,), got shape "
                             f"{tuple(alpha.shape)}")
        if alpha.requires_grad and not alpha.is_leaf:
            raise ValueError("alpha must be a leaf tensor (e.g. an nn.Parameter): a computed tensor "
                             "would be captured once and never recomputed")
        with torch.no_grad():
            check_alpha(alpha)
        return Marking(alpha, enabled)
    check_alpha(alpha)
    return Marking(float(alpha), enabled)


def sparse_attention(module=None, /, *, alpha=None, enabled: bool = True):
    """Mark the attention of a module class or instance for the adasplash backend.

    As a decorator, ``@sparse_attention`` or ``@sparse_attention(alpha=2.0)`` on an ``nn.Module``
    subclass marks every instance; ``sparse_attention(module, alpha=...)`` marks one instance
    (returned). ``alpha``: float > 1 or a (num_heads,) tensor; ``enabled=False`` excludes the
    module's attention from the rewrite. With the backend's ``scope="marked"``, only marked
    modules are rewritten.
    """
    marking = _checked(alpha, enabled)

    def mark(target):
        if isinstance(target, type) and issubclass(target, nn.Module):
            if isinstance(marking.alpha, torch.Tensor):
                raise TypeError("a tensor alpha belongs to one module: mark an instance with "
                                "sparse_attention(module, alpha=tensor)")
            setattr(target, _MARK, marking)
            return target
        if isinstance(target, nn.Module):
            _set_tensor_alpha(target, marking.alpha if isinstance(marking.alpha, torch.Tensor) else None)
            base = type(target).__dict__.get(_BASE, type(target))
            target.__class__ = type(base.__name__, (base,), {
                _MARK: marking, _BASE: base, "__module__": base.__module__,
                "__qualname__": base.__qualname__,
            })
            return target
        raise TypeError(f"sparse_attention marks an nn.Module subclass or instance, got "
                        f"{type(target).__name__}")

    return mark if module is None else mark(module)


def marking_of(cls) -> Optional[Marking]:
    """The ``Marking`` that ``sparse_attention`` put on a module class, or None."""
    return getattr(cls, _MARK, None)


def module_path(source: str) -> str:
    """Dynamo's module source ("L['self'].layers[0].attn") as a path ("layers[0].attn")."""
    for prefix in ("L['self'].", "L['self']", "L['fn'].", "L['fn']", "L['mod'].", "L['mod']",
                   "L['args'][0].", "L['args'][0]"):
        if source.startswith(prefix):
            return source[len(prefix):]
    for prefix in ("L['", "G['"):
        if source.startswith(prefix):
            name, _, rest = source[len(prefix):].partition("']")
            return name + rest
    return source


def enclosing(node) -> tuple:
    """(marking, marked path, path, class name): the marking and path of the innermost marked
    module around node (None, "" if none is), the path and class name of the innermost module."""
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    marking, marked = None, ""
    for source, cls in reversed(stack):
        if isinstance(cls, type) and marking_of(cls) is not None:
            marking, marked = marking_of(cls), module_path(source)
            break
    if not stack:
        return marking, marked, "", ""
    source, cls = stack[-1]
    return marking, marked, module_path(source), getattr(cls, "__name__", str(cls))
