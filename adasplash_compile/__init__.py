"""adasplash-compile: sparse alpha-entmax attention for PyTorch models, one line away.

    model = torch.compile(model, backend=adasplash_compile.backend)

``backend`` (also ``backend="adasplash"``) rewrites every softmax-attention site of the model
into ``torch.ops.adasplash.entmax_attention``; ``Backend(...)`` builds one with other defaults;
``sparse_attention`` marks attention modules (alpha, or exclusion); ``explain`` reports what the
rewrite finds. Eager functions: ``entmax`` and ``entmax_attention`` (the signature of
``F.scaled_dot_product_attention`` plus ``alpha``), and ``attention_stats`` (how sparse it is).
"""

from .backend import Backend, backend, explain
from .functional import attention_stats, entmax, entmax_attention
from .marking import sparse_attention
from .report import Report, Site

__all__ = ["Backend", "Report", "Site", "attention_stats", "backend", "entmax", "entmax_attention",
           "explain", "sparse_attention"]
__version__ = "0.1.0"
