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
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from leanlm.serve.metrics import Metrics, routing
from leanlm.serve.registry import ENDPOINT_MODULES, ModelRegistry, load_endpoints
from leanlm.serve.schemas import ApiError, error_body

log = logging.getLogger("leanlm.serve")

STATIC = Path(__file__).with_name("static")  # the web page at /, shipped as package data


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
        routed = routing()  # ModelRegistry.get fills in the model, for the counters' label
        if config.api_key and path.startswith("/v1/") and not _authorized(request, config.api_key):
            response: Any = JSONResponse(error_body("missing or wrong API key: send 'Authorization: Bearer <key>'",
                                                    "authentication_error", None, "invalid_api_key"), status_code=401)
        else:
            response = await call_next(request)
        ms = (time.perf_counter() - t0) * 1e3  # for a stream: until the response starts
        route = request.scope.get("route")  # the matched route's template; unknown paths must not grow the counters
        known = getattr(route, "path", None) or "other"
        metrics.observe(known, response.status_code, ms, routed.get("model", ""))
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
    async def metrics_view(format: str = "prometheus") -> Any:
        """Prometheus' text format (requests by path, model and status; latency, queue-time and
        batch-size histograms; queue depth; rejections), or `?format=json` with p50/p99 windows."""
        if format == "prometheus":
            body, content_type = metrics.prometheus(registry)
            return Response(body, media_type=content_type)
        if format != "json":
            raise ApiError(400, f"format must be 'json' or 'prometheus', got {format!r}", param="format")
        return metrics.snapshot(registry)

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


def _authorized(request: Request, key: str) -> bool:
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    # constant-time compare: the answer time must not reveal how much of the key matched
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())
