"""A compile-cache key for Inductor that changes whenever the ops, kernels or lowering change.

Inductor's FX graph cache and AOTAutograd's cache hash the graph, the config and the ``uuid()``
of custom graph passes, but not the Python code behind a custom op (its fake, its routing,
its kernels). ``SourceHash`` is a no-op post-grad pass whose uuid hashes every ``.py`` file of
``lowering/`` and ``kernels/``, so an edited kernel never meets a stale compiled module.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import kernels
import lowering

try:  # torch >= 2.6
    from torch._inductor.custom_graph_pass import CustomGraphPass
except ImportError:  # pragma: no cover
    CustomGraphPass = None

_CONFIG_KEY = "post_grad_custom_post_pass"


def source_files() -> list:
    roots = [Path(m.__file__).parent for m in (lowering, kernels)]
    return sorted(p for root in roots for p in root.rglob("*.py"))


def source_digest() -> str:
    h = hashlib.sha256()
    for path in source_files():
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


if CustomGraphPass is not None:

    class SourceHash(CustomGraphPass):
        """No-op pass; runs ``inner`` (a pass that was configured already) if there is one."""

        def __init__(self, inner=None):
            self.inner = inner

        def __call__(self, graph) -> None:
            if self.inner is not None:
                self.inner(graph)

        def uuid(self):
            inner = self.inner.uuid() if hasattr(self.inner, "uuid") else None
            if self.inner is not None and inner is None:
                return None  # an inner pass without a uuid: the cache is bypassed anyway
            return (source_digest(), inner)


def with_cache_key(patches: dict) -> dict:
    """Inductor config patches plus the source-hash pass (or no FX graph cache without one)."""
    patches = dict(patches)
    if CustomGraphPass is None:
        patches["fx_graph_cache"] = False
        return patches
    import torch._inductor.config as inductor_config

    inner = patches.get(_CONFIG_KEY, getattr(inductor_config, _CONFIG_KEY, None))
    patches[_CONFIG_KEY] = SourceHash(inner)
    return patches
