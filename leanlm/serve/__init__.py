"""HTTP serving: `leanlm serve MODEL_DIR ...` (FastAPI + uvicorn) with dynamic batching.

Endpoints: /v1/classify, /v1/embeddings, /v1/completions, /v1/chat/completions (OpenAI shapes,
SSE streaming), /v1/answer (extractive QA), /v1/models, /health, /ready, /metrics, and a web page
at /. `--workers N` runs N processes on one port. Needs the `serve` extra (fastapi, uvicorn).

Example:
    >>> from leanlm.serve import ModelRegistry, ServeConfig, create_app
    >>> app = create_app(ModelRegistry.load(["runs/sentiment"], ServeConfig(max_batch=16)))
"""
from __future__ import annotations

from typing import Any

from leanlm.serve.config import ServeConfig

__all__ = ["ServeConfig", "ModelRegistry", "create_app", "Batcher"]

_LAZY = {"ModelRegistry": "leanlm.serve.registry", "create_app": "leanlm.serve.app", "Batcher": "leanlm.serve.batcher"}


def __getattr__(name: str) -> Any:
    # fastapi is an optional extra: import it only when the server is actually used
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'leanlm.serve' has no attribute {name!r}")
