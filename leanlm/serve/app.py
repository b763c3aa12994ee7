"""The FastAPI application: endpoints from the endpoint modules, errors, auth, metrics, health.

Every error on /v1/* is OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`;
/health (liveness), /ready (models loaded and warmed), /metrics and the web page at / stay outside
the API key, as in text-embeddings-inference (the page asks for the key and sends it itself).
Each response carries an `x-request-id` (the client's, or a new one) and one JSON log line per
request goes to the `leanlm.serve` logger.

Example:
    >>> from leanlm.serve import ModelRegistry, ServeConfig, create_app
    >>> app = create_app(ModelRegistry.load(["runs/sentiment"], ServeConfig(max_batch=16)))
    >>> # uvicorn.run(app, host="127.0.0.1", port=8000), or `leanlm serve runs/sentiment`
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import importlib
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from leanlm.serve.batcher import percentiles
from leanlm.serve.registry import ENDPOINT_MODULES, ModelRegistry, load_endpoints
from leanlm.serve.schemas import ApiError, error_body

log = logging.getLogger("leanlm.serve")

STATIC = Path(__file__).with_name("static")  # the web page at /, shipped as package data


class Metrics:
    """Request counts by endpoint and status, and a bounded latency window per endpoint."""

    def __init__(self, window: int = 4096):
        self.started = time.time()
        self.counts: collections.Counter = collections.Counter()
        self.latency: dict[str, collections.deque] = collections.defaultdict(lambda: collections.deque(maxlen=window))

    def observe(self, path: str, status: int, ms: float) -> None:
        self.counts[(path, status)] += 1
        self.latency[path].append(ms)

    def snapshot(self, registry: ModelRegistry) -> dict[str, Any]:
        by_path: dict[str, dict[str, int]] = collections.defaultdict(dict)
        for (path, status), n in sorted(self.counts.items()):
            by_path[path][str(status)] = n
        models = registry.metrics()
        return {
            "uptime_s": round(time.time() - self.started, 3),
            "requests": dict(by_path),
            "latency_ms": {path: percentiles(list(window)) for path, window in self.latency.items()},
            "queue_depth": sum(m.get("queue_depth", 0) for caps in models.values() for m in caps.values()),
            "rejected": sum(m.get("rejected", 0) for caps in models.values() for m in caps.values()),
            "models": models,
        }


def create_app(registry: ModelRegistry) -> FastAPI:
    """A FastAPI app serving `registry`'s models (warm-up runs at startup, batchers close at shutdown).

    Args:
        registry: the loaded models and the ServeConfig (limits, batching, api_key).

    Example:
        >>> app = create_app(ModelRegistry({"clf": leanlm.load("runs/sentiment")}))
    """
    from leanlm.serve.knowledge import attach

    load_endpoints()
    config = registry.config
    metrics = Metrics()
    knowledge = attach(registry)  # before the app exists: a bad --knowledge-base fails here, in one line

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if knowledge is not None:
            await asyncio.to_thread(knowledge.build)
        if config.warmup:
            await asyncio.to_thread(registry.warm)
        registry.ready = True
        yield
        await registry.close()

    app = FastAPI(title="leanlm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.knowledge = knowledge
    for name in ENDPOINT_MODULES:
        app.include_router(importlib.import_module(name).router)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, e: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return JSONResponse(error_body(f"{request.method} {request.url.path}: {e.detail}", code=code),
                            status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(error_body(f"internal error: {type(e).__name__}", "server_error", None, "internal_error"),
                            status_code=500)

    @app.middleware("http")
    async def _around(request: Request, call_next: Any) -> Any:
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        path = request.url.path
        t0 = time.perf_counter()
        if config.api_key and path.startswith("/v1/") and not _authorized(request, config.api_key):
            response: Any = JSONResponse(error_body("missing or wrong API key: send 'Authorization: Bearer <key>'",
                                                    "authentication_error", None, "invalid_api_key"), status_code=401)
        else:
            response = await call_next(request)
        ms = (time.perf_counter() - t0) * 1e3  # for a stream: until the response starts
        route = request.scope.get("route")  # the matched route's template; unknown paths must not grow the counters
        known = getattr(route, "path", None) or "other"
        metrics.observe(known, response.status_code, ms)
        response.headers["x-request-id"] = rid
        if log.isEnabledFor(logging.INFO):
            log.info(json.dumps({"ts": round(time.time(), 3), "request_id": rid, "method": request.method,
                                 "path": path, "status": response.status_code, "ms": round(ms, 3)}))
        return response

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        """The web page: pick a model, classify, find neighbours, answer or stream a completion."""
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness: the process answers (with its pid, so replicas behind one port can be told apart)."""
        return {"status": "ok", "pid": os.getpid()}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """Readiness: every model loaded and warmed up."""
        body = {"status": "ready" if registry.ready else "starting", "models": registry.names()}
        if knowledge is not None:
            body["knowledge_base"] = knowledge.info()
        return JSONResponse(body, status_code=200 if registry.ready else 503)

    @app.get("/metrics")
    async def metrics_view(format: str = "json") -> Any:
        """Requests by endpoint and status, latency p50/p99, batch sizes and queue depth per model
        (JSON; `?format=prometheus` for Prometheus' text format)."""
        snap = metrics.snapshot(registry)
        if format == "prometheus":
            return PlainTextResponse(prometheus_text(snap), media_type="text/plain; version=0.0.4")
        if format != "json":
            raise ApiError(400, f"format must be 'json' or 'prometheus', got {format!r}", param="format")
        return snap

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        """The served models (OpenAI list shape, plus task, backend, techniques and capabilities)."""
        return {"object": "list", "data": [m.info() for m in registry.models.values()]}

    @app.get("/v1/models/{name}")
    async def model(name: str) -> dict[str, Any]:
        served = registry.models.get(name)
        if served is None:
            raise ApiError(404, f"the model {name!r} does not exist; served: {', '.join(registry.names())}",
                           param="model", code="model_not_found")
        return served.info()

    return app


def prometheus_text(snap: dict[str, Any]) -> str:
    """A /metrics snapshot in Prometheus' text exposition format (no client library needed)."""
    lines: list[str] = []

    def metric(name: str, kind: str, help: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.extend([f"# HELP leanlm_{name} {help}", f"# TYPE leanlm_{name} {kind}"])
        for labels, value in samples:
            tags = ",".join(f'{k}="{v}"' for k, v in labels.items())
            lines.append(f"leanlm_{name}{{{tags}}} {value}" if tags else f"leanlm_{name} {value}")

    metric("requests_total", "counter", "HTTP requests by path and status.",
           [({"path": p, "status": st}, n) for p, by in snap["requests"].items() for st, n in by.items()])
    metric("request_latency_ms", "summary", "Request latency over the recent window (ms).",
           [({"path": p, "quantile": q}, lat[k]) for p, lat in snap["latency_ms"].items()
            for q, k in (("0.5", "p50"), ("0.99", "p99"))])
    per = [({"model": m, "capability": c}, s) for m, caps in snap["models"].items() for c, s in caps.items()]
    for name, key, kind, help in (("queue_depth", "queue_depth", "gauge", "Requests waiting for a batch."),
                                  ("rejected_total", "rejected", "counter", "Requests shed with 429 (queue full)."),
                                  ("batches_total", "batches", "counter", "Forward passes run."),
                                  ("batch_items_total", "items", "counter", "Texts or prompts run in batches."),
                                  ("failed_batches_total", "failed_batches", "counter", "Batches the model failed.")):
        metric(name, kind, help, [(labels, s[key]) for labels, s in per])
    metric("batch_size_count", "counter", "Forward passes by batch size.",
           [({**labels, "size": size}, n) for labels, s in per for size, n in s["batch_size"]["histogram"].items()])
    metric("uptime_seconds", "gauge", "Seconds since the server started.", [({}, snap["uptime_s"])])
    return "\n".join(lines) + "\n"


def _authorized(request: Request, key: str) -> bool:
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    # constant-time compare: the answer time must not reveal how much of the key matched
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())
