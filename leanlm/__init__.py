"""leanlm: make transformer language models fast and cheap at inference, and prove it.

Public verbs (the CLI exposes the same ones):
    load, embed, finetune, quantize_, quantize, prune_, prune, factorize_, factorize, evaluate, benchmark, generate,
    optimize (the package `leanlm.optimize`, callable: `leanlm.optimize(model_dir, out_dir, ...)`)
"""
from __future__ import annotations

import logging as _logging
import os as _os
import warnings as _warnings

__version__ = "0.1.0"

# torchao probes for CUDA-only extensions and torch warns about pytree enum registration on
# import; neither is actionable for users of a CPU build, so keep the terminal clean.
_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
for _name in ("torchao", "torch.utils._pytree"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)
_warnings.filterwarnings("ignore", message=".*Enum subclass.*")

_LAZY = {
    "load": "leanlm.models.loading",
    "embed": "leanlm.models.embed",
    "LeanModel": "leanlm.artifact",
    "quantize_": "leanlm.compress.quantize",
    "quantize": "leanlm.compress.quantize",
    "QuantContext": "leanlm.compress.quantize",
    "prune_": "leanlm.compress.prune",
    "prune": "leanlm.compress.prune",
    "PruneContext": "leanlm.compress.prune",
    "factorize_": "leanlm.compress.lowrank",
    "factorize": "leanlm.compress.lowrank",
    "finetune": "leanlm.train.finetune",
    "FinetuneConfig": "leanlm.train.finetune",
    "evaluate": "leanlm.bench.evaluate",
    "benchmark": "leanlm.bench.measure",
    "generate": "leanlm.generate",
    "LeanlmError": "leanlm.errors",
}

# Packages that are verbs themselves (their module is callable).
_CALLABLE_PACKAGES = ("optimize",)

__all__ = sorted(_LAZY) + list(_CALLABLE_PACKAGES) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _CALLABLE_PACKAGES:
        import importlib

        return importlib.import_module(f"leanlm.{name}")
    raise AttributeError(f"module 'leanlm' has no attribute {name!r}")
