"""Loaded models by name, what each can do, and the path from a request to its model's batcher.

A *capability* is one thing a served model can do ("classify", "embed", "generate"): which
models accept it and how to build the blocking batch function for a model. Endpoint modules
register theirs with `@capability`; a new task (extractive QA, say) is one module with its
capability and its route, listed in `ENDPOINT_MODULES`.

Example:
    >>> reg = ModelRegistry.load(["runs/sentiment", "smollm2-135m"], ServeConfig())
    >>> reg.names()
    ['sentiment', 'smollm2-135m']
    >>> await reg.dispatch("sentiment", "classify", [("a fine film", 5)])
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from leanlm.errors import ConfigError, LeanlmError
from leanlm.serve.batcher import BatchFn, Batcher, Closed, QueueFull
from leanlm.serve.metrics import note_model
from leanlm.serve.config import ServeConfig, apply_threads
from leanlm.serve.schemas import ApiError


@dataclass(frozen=True)
class Capability:
    """One thing a model can be asked over HTTP.

    Args:
        name: "classify", "embed", "generate", "answer", ...
        accepts: `accepts(model) -> bool`, whether a loaded LeanModel can do it.
        make: `make(model, config) -> fn(items) -> results`, the blocking batch function.
        batched: False runs one request per call (the decode loop is batch 1).
        warmup: items for one warm-up call, or None to skip.
        tokens: `tokens(item) -> int`, so batches also respect ServeConfig.max_batch_tokens.
    """

    name: str
    accepts: Callable[[Any], bool]
    make: Callable[[Any, ServeConfig], BatchFn]
    batched: bool = True
    warmup: Callable[[Any], list[Any]] | None = None
    tokens: Callable[[Any], int] | None = None


CAPABILITIES: dict[str, Capability] = {}

# Each module has `router` (its routes) and registers its capabilities on import.
ENDPOINT_MODULES = ["leanlm.serve.encoders", "leanlm.serve.completions", "leanlm.serve.qa"]


def load_endpoints() -> None:
    import importlib

    for name in ENDPOINT_MODULES:
        importlib.import_module(name)


def capability(name: str, accepts: Callable[[Any], bool], batched: bool = True,
               warmup: Callable[[Any], list[Any]] | None = None,
               tokens: Callable[[Any], int] | None = None) -> Callable[[Callable], Callable]:
    """Decorator on a `make(model, config)` function: register it as capability `name`."""

    def deco(make: Callable[[Any, ServeConfig], BatchFn]) -> Callable[[Any, ServeConfig], BatchFn]:
        CAPABILITIES[name] = Capability(name, accepts, make, batched, warmup, tokens)
        return make

    return deco


class ServedModel:
    """One loaded model under a name, with a batcher per capability (made on first use)."""

    def __init__(self, name: str, model: Any, config: ServeConfig):
        load_endpoints()  # capabilities register on import
        self.name, self.model, self.config = name, model, config
        self.created = int(time.time())
        self.capabilities = [c for c in CAPABILITIES.values() if c.accepts(model)]
        self._batchers: dict[str, Batcher] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"leanlm-{name}")

    @functools.cached_property
    def tokenizer(self) -> Any:
        """A copy of the model's tokenizer for the event-loop thread (counting tokens, chat
        templates). A fast tokenizer used from two threads at once fails with "Already borrowed"
        when one call changes its truncation settings, and the worker thread owns the original."""
        return copy.deepcopy(self.model.tokenizer)

    def can(self, capability: str) -> bool:
        return any(c.name == capability for c in self.capabilities)

    def batcher(self, capability: str) -> Batcher:
        b = self._batchers.get(capability)
        if b is None:
            cap = CAPABILITIES[capability]
            c = self.config
            b = Batcher(cap.make(self.model, c), max_batch=c.max_batch if cap.batched else 1,
                        max_wait_ms=c.max_wait_ms if cap.batched else 0.0, max_queue=c.max_queue,
                        name=f"{self.name}/{capability}", tokens_of=cap.tokens,
                        max_batch_tokens=c.max_batch_tokens, executor=self._executor)
            self._batchers[capability] = b
        return b

    def warm(self) -> None:
        """Run each capability's warm-up items once, straight through (before serving)."""
        for cap in self.capabilities:
            if cap.warmup is not None:
                self.batcher(cap.name).fn(cap.warmup(self.model))

    def info(self) -> dict[str, Any]:
        rec = self.model.record
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "leanlm",
                "task": self.model.task, "backend": self.model.backend, "base_model": rec.base_model,
                "techniques": [t.get("type") for t in rec.techniques], "labels": self.model.labels,
                "capabilities": [c.name for c in self.capabilities]}

    def batchers(self) -> dict[str, Any]:
        """Capability name -> its Batcher (the ones started so far)."""
        return dict(self._batchers)

    def metrics(self) -> dict[str, Any]:
        return {name: b.stats.snapshot(b.queue_depth) for name, b in self._batchers.items()}

    async def close(self) -> None:
        for b in self._batchers.values():
            await b.close()
        self._executor.shutdown(wait=True)


def model_name(spec: str) -> str:
    """The name a model is served under when none is given: its directory's name, or the bundled name."""
    p = Path(spec).expanduser()
    return p.resolve().name if p.exists() else spec


def _named_specs(specs: Sequence[str], named: dict[str, str] | None) -> list[tuple[str, str]]:
    pairs = [(model_name(s), s) for s in specs] + list((named or {}).items())
    names = [n for n, _ in pairs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"two models would be served as {dupes[0]!r}; name them with --name NAME=DIR")
    return pairs


def check_specs(specs: Sequence[str], named: dict[str, str] | None = None) -> list[str]:
    """The names the models would be served under, checking without loading them (for --workers,
    where every worker loads its own copy): each must be a path, a bundled name or a hub id."""
    from leanlm.models.registry import BUNDLED

    pairs = _named_specs(specs, named)
    for _, spec in pairs:
        if not Path(spec).expanduser().exists() and spec not in BUNDLED and spec.count("/") != 1:
            raise ConfigError(f"model {spec!r} is neither a directory nor a bundled name ({', '.join(BUNDLED)})")
    return [name for name, _ in pairs]


class ModelRegistry:
    """The models one server holds, by name.

    Example:
        >>> reg = ModelRegistry({"clf": leanlm.load("runs/sentiment")}, ServeConfig(max_batch=8))
    """

    def __init__(self, models: dict[str, Any], config: ServeConfig | None = None):
        self.config = config or ServeConfig()
        if not models:
            raise ConfigError("serve needs at least one model")
        self.models = {name: ServedModel(name, m, self.config) for name, m in models.items()}
        self.ready = False

    @classmethod
    def load(cls, specs: Sequence[str], config: ServeConfig | None = None,
             named: dict[str, str] | None = None) -> "ModelRegistry":
        """Load model directories or bundled names; `named` maps explicit names to specs."""
        from leanlm.models.loading import load

        apply_threads((config or ServeConfig()).threads)  # before loading: runtimes read it at session start
        return cls({name: load(spec) for name, spec in _named_specs(specs, named)}, config)

    def names(self) -> list[str]:
        return list(self.models)

    def get(self, name: str | None, capability: str) -> ServedModel:
        """The model a request names (or the only one that can do `capability`), else a 4xx."""
        if name is None:
            able = [m for m in self.models.values() if m.can(capability)]
            if len(able) == 1:
                note_model(able[0].name)
                return able[0]
            raise ApiError(400, f"say which model: {', '.join(m.name for m in able) or 'none can ' + capability}",
                           param="model", code="model_required")
        served = self.models.get(name)
        if served is None:
            raise ApiError(404, f"the model {name!r} does not exist; served: {', '.join(self.models)}",
                           param="model", code="model_not_found")
        if not served.can(capability):
            able = [m.name for m in self.models.values() if m.can(capability)]
            raise ApiError(400, f"model {name!r} is a {served.model.task} model and cannot {capability}; "
                           f"models that can: {', '.join(able) or 'none'}", param="model", code="unsupported_model")
        note_model(served.name)
        return served

    def warm(self) -> None:
        for served in self.models.values():
            served.warm()
        self.ready = True

    async def dispatch(self, served: ServedModel, capability: str, items: list[Any]) -> list[Any]:
        """Run `items` through the model's batcher, mapping every failure to an ApiError."""
        with shedding():
            future = served.batcher(capability).enqueue(items)
        try:
            return await asyncio.wait_for(future, self.config.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, f"the request took longer than {self.config.timeout_s:g} s", type="server_error",
                           code="timeout") from None
        except LeanlmError as e:
            raise ApiError(400, str(e).splitlines()[0]) from None
        except Exception as e:
            raise model_failed(served, e) from e

    def metrics(self) -> dict[str, Any]:
        return {name: m.metrics() for name, m in self.models.items()}

    async def close(self) -> None:
        for served in self.models.values():
            await served.close()


@contextlib.contextmanager
def shedding() -> Iterator[None]:
    """Turn a full or closing queue into 429 / 503 responses."""
    try:
        yield
    except QueueFull as e:
        raise ApiError(429, f"model is overloaded: {e}; retry shortly", type="server_error",
                       code="overloaded", headers={"Retry-After": "1"}) from None
    except Closed as e:
        raise ApiError(503, str(e), type="server_error", code="shutting_down") from None


def model_failed(served: ServedModel, error: BaseException) -> ApiError:
    first = str(error).splitlines()[0] if str(error) else ""
    return ApiError(500, f"model {served.name!r} failed on this batch: {type(error).__name__}: {first}"[:500],
                    type="server_error", code="model_error")
