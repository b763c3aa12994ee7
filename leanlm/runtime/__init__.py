"""Runtimes ("backends") that execute a model directory.

A backend knows how to save a `LeanModel` into a directory and load it back. `torch` runs the
PyTorch module (eager, or compiled by a technique); `onnxruntime` and `openvino` run exported
graphs. Each backend lives in its own module and registers itself here by name.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

from leanlm.errors import UnsupportedError, did_you_mean


class Backend(Protocol):
    name: str

    def save(self, model: Any, directory: Path) -> str:
        """Write the model's weights/graph into `directory`; return the weights file name."""

    def load(self, directory: Path, record: Any, device: str | None = None) -> Any:
        """Return a LeanModel for a directory whose record names this backend."""


_BACKENDS: dict[str, Backend] = {}
# name -> module that registers it (imported lazily: optional dependencies stay optional)
_MODULES = {
    "torch": "leanlm.runtime.torch_eager",
    "onnxruntime": "leanlm.runtime.onnxruntime",
    "openvino": "leanlm.runtime.openvino",
    "composite": "leanlm.runtime.composite",
}


def register_backend(backend: Backend) -> Backend:
    _BACKENDS[backend.name] = backend
    return backend


def get_backend(name: str) -> Backend:
    if name not in _BACKENDS:
        if name not in _MODULES:
            raise UnsupportedError(did_you_mean(name, list(_MODULES), "backend"))
        importlib.import_module(_MODULES[name])
    return _BACKENDS[name]


def backend_names() -> list[str]:
    return sorted(_MODULES)
