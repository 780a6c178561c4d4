"""The torch.compile backend: rewrite attention on Dynamo's graph, then compile with Inductor.

    model = torch.compile(model, backend=adasplash_compile.backend)          # alpha = 1.5
    model = torch.compile(model, backend=adasplash_compile.Backend(alpha=2.0, scope="marked"))
    model = torch.compile(model, backend="adasplash", mode="max-autotune")

``Backend(alpha, scope, compiler, dump_dir)`` builds one with other defaults. ``mode`` and
``options`` of torch.compile go to Inductor as they would with ``backend="inductor"``. Setting
``dump_dir`` (or the environment variable ``ADASPLASH_DUMP_DIR``) writes every graph before and
after the rewrite, and its site table, to that folder.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Optional

import torch

from .cache_key import with_cache_key
from .checks import check_alpha
from .report import GraphReport, Report
from .rewrite import rewrite

SCOPES = ("all", "marked")
COMPILERS = ("inductor", "aot_eager", "eager")
DUMP_ENV = "ADASPLASH_DUMP_DIR"

_dump_numbers = itertools.count()


class Backend:
    """A torch.compile backend giving the model alpha-entmax attention.

    alpha: float > 1 for every site not set by ``sparse_attention`` (1.5: entmax-1.5; 2:
    sparsemax). scope: "all" rewrites every attention site, "marked" only those inside a module
    marked with ``sparse_attention``. compiler: "inductor", or "aot_eager" / "eager" to debug
    the rewrite without Inductor. dump_dir: a folder for graph dumps (default: $ADASPLASH_DUMP_DIR).
    """

    def __init__(self, alpha: float = 1.5, scope: str = "all", compiler: str = "inductor",
                 dump_dir: Optional[os.PathLike] = None):
        check_alpha(alpha)
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        if compiler not in COMPILERS:
            raise ValueError(f"compiler must be one of {COMPILERS}, got {compiler!r}")
        self.alpha, self.scope, self.compiler = float(alpha), scope, compiler
        self.dump_dir = dump_dir
        self._graphs = itertools.count()
        self._sink: Optional[list] = None

    def __repr__(self) -> str:
        return (f"Backend(alpha={self.alpha:g}, scope={self.scope!r}, compiler={self.compiler!r}, "
                f"dump_dir={self.dump_dir!r})")

    def __call__(self, gm: torch.fx.GraphModule, example_inputs, mode: Optional[str] = None,
                 options: Optional[dict] = None):
        keep_graphs = self._sink is not None or self._dump_folder() is not None
        report = rewrite(gm, self.alpha, self.scope, index=next(self._graphs), graphs=keep_graphs)
        self._dump(report)
        if self._sink is not None:
            self._sink.append(report)
        return self._compile(gm, example_inputs, mode, options)

    def _compile(self, gm, example_inputs, mode, options):
        if self.compiler != "inductor":
            if mode or options:
                raise ValueError(f"mode={mode!r} / options={options!r} configure Inductor; this "
                                 f"backend uses compiler={self.compiler!r}")
            if self.compiler == "eager":
                return gm.forward
            return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)
        from torch._inductor import list_mode_options
        from torch._inductor.compile_fx import compile_fx

        patches = list_mode_options(mode) if mode else dict(options or {})
        return compile_fx(gm, example_inputs, config_patches=with_cache_key(patches))

    def _dump_folder(self) -> Optional[Path]:
        folder = self.dump_dir or os.environ.get(DUMP_ENV)
        return Path(folder) if folder else None

    def _dump(self, report: GraphReport) -> None:
        folder = self._dump_folder()
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"graph_{next(_dump_numbers):03d}"
        (folder / f"{stem}_before.py").write_text(report.before)
        (folder / f"{stem}_after.py").write_text(report.after)
        (folder / f"{stem}_sites.txt").write_text(str(Report([report])) + "\n")

    def explain(self, model_or_fn, *args, **kwargs) -> Report:
        """Run ``model_or_fn(*args, **kwargs)`` once under torch.compile with this backend's
        rewrite (and no Inductor); return the sites found in each graph and the graphs."""
        recorder = Backend(self.alpha, self.scope, "eager", self.dump_dir)
        recorder._sink = []
        torch.compile(model_or_fn, backend=recorder)(*args, **kwargs)
        if not recorder._sink:
            raise RuntimeError("torch.compile captured no graph in this call (was the function "
                               "recompiled too often? torch._dynamo.reset() clears its cache)")
        return Report(recorder._sink)


backend = Backend()


def explain(model_or_fn, *args, **kwargs) -> Report:
    """``backend.explain``: the attention sites the default backend finds in one call of
    ``model_or_fn(*args, **kwargs)``, whether each is rewritten and why not, and the graphs."""
    return backend.explain(model_or_fn, *args, **kwargs)


def _register() -> None:
    """Register the name "adasplash" unless the installed entry point provides it."""
    from importlib.metadata import entry_points

    if "adasplash" in entry_points(group="torch_dynamo_backends").names:
        return
    try:
        torch._dynamo.register_backend(compiler_fn=backend, name="adasplash")
    except AssertionError:  # registered already (module reloaded)
        pass


_register()
