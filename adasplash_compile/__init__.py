"""adasplash-compile: sparse alpha-entmax attention for PyTorch models, one line away.

    model = torch.compile(model, backend=adasplash_compile.backend)

Eager functions: ``entmax`` and ``entmax_attention`` (the signature of
``F.scaled_dot_product_attention`` plus ``alpha``).
"""

from .functional import entmax, entmax_attention

__all__ = ["entmax", "entmax_attention"]
__version__ = "0.1.0"
