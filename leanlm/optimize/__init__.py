"""`leanlm.optimize`: a measured search for the accuracy x speed x size frontier.

The package itself is callable, so `leanlm.optimize(...)` runs a search while
`leanlm.optimize.search`, `.space`, `.gate` stay importable modules (the package's module
class gets a `__call__`; nothing else changes):

Example:
    >>> import leanlm
    >>> res = leanlm.optimize("runs/sentiment", "runs/opt", data="movie-snippets", max_accuracy_drop=1.0,
    ...                       budget_minutes=30)
    >>> res.recommended        # leanlm serve runs/opt/recommended --port 8000
"""
from __future__ import annotations

import sys
import types
from typing import Any


def optimize(model_dir: Any, out_dir: Any, config: Any = None, **options: Any) -> Any:
    """Run a search (see `leanlm.optimize.search.optimize` for the arguments)."""
    from leanlm.optimize.search import optimize as run

    return run(model_dir, out_dir, config, **options)


def __getattr__(name: str) -> Any:
    if name in ("OptimizeConfig", "OptimizeResult"):
        from leanlm.optimize import search

        return getattr(search, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return optimize(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
