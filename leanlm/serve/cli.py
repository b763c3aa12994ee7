"""CLI: `leanlm serve MODEL [MODEL ...]`, an HTTP server over model directories or bundled models."""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
from typing import List, Optional

import typer

from leanlm.serve.config import ServeConfig

_D = ServeConfig()  # option defaults come from the config, so the two never disagree


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)


def require_server() -> tuple:
    """fastapi and uvicorn (the `serve` extra), or a one-line message saying what to install."""
    try:
        import fastapi
        import uvicorn
    except ImportError as e:
        from leanlm.errors import UnsupportedError

        raise UnsupportedError(f"leanlm serve needs {e.name}: pip install 'leanlm[serve]'") from None
    return fastapi, uvicorn


def parse_names(pairs: List[str]) -> dict[str, str]:
    """`NAME=DIR` pairs from --name into {name: dir}."""
    from leanlm.errors import ConfigError

    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, spec = pair.partition("=")
        if not sep or not name.strip() or not spec.strip():
            raise ConfigError(f"--name takes NAME=DIR, got {pair!r}")
        if name in out:
            raise ConfigError(f"--name {name} is given twice")
        out[name.strip()] = spec.strip()
    return out


def serve_cmd(
    models: Optional[List[str]] = typer.Argument(None, help="Model directories or bundled names (served under "
                                                 "the directory's name)."),
    name: Optional[List[str]] = typer.Option(None, "--name", help="Serve a model under a chosen name: NAME=DIR "
                                             "(repeatable)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 exposes the server to the network)."),
    port: int = typer.Option(8000, help="TCP port."),
    max_batch: int = typer.Option(_D.max_batch, help="Most texts per forward pass (1 = batching off)."),
    max_batch_tokens: int = typer.Option(_D.max_batch_tokens, help="Most padded tokens (texts x longest) per "
                                         "forward pass."),
    split_cost_tokens: int = typer.Option(_D.split_cost_tokens, help="Split a batch into length-sorted parts where "
                                          "one more forward call (this many padded tokens' cost) saves more padding; "
                                          "0: never split."),
    max_wait_ms: float = typer.Option(_D.max_wait_ms, help="How long a request waits for others to join its batch."),
    max_queue: int = typer.Option(_D.max_queue, help="Waiting requests per model before answering 429."),
    api_key: Optional[str] = typer.Option(None, envvar="LEANLM_API_KEY", help="Require 'Authorization: Bearer KEY' "
                                          "on /v1/* (or set LEANLM_API_KEY)."),
    max_body_bytes: int = typer.Option(_D.max_body_bytes, help="Largest request body (413 above)."),
    max_tokens: int = typer.Option(_D.max_tokens, help="Most tokens per input text or prompt."),
    max_texts: int = typer.Option(_D.max_texts, help="Most texts per request."),
    max_new_tokens: int = typer.Option(_D.max_new_tokens, help="Most tokens one completion may generate."),
    timeout_s: float = typer.Option(_D.timeout_s, help="Answer 504 after this many seconds."),
    warmup: bool = typer.Option(_D.warmup, "--warmup/--no-warmup", help="Run one request per model before ready."),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log", help="One JSON line per request on stderr."),
    workers: int = typer.Option(1, help="Worker processes on the one port, each with its own copy of the models "
                                "(and its own Python interpreter: on CPU, 2+ single-thread workers usually beat "
                                "one worker using every core; see README, Serving)."),
    threads: Optional[int] = typer.Option(None, help="Intra-op threads per worker process (default: every core, "
                                          "or cores // workers with --workers)."),
    knowledge_base: Optional[str] = typer.Option(None, "--knowledge-base", help="Passages for /v1/answer without a "
                                                 "context: .txt (a passage per paragraph), .jsonl, SQuAD .json, a "
                                                 "directory of them, or a saved index."),
    embedder: Optional[str] = typer.Option(None, help="Model that embeds the knowledge base: a served model's name, "
                                           "a directory or a bundled name (default: the served embedder, else "
                                           "minilm-l6)."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Serve through Ray Serve: 'local' (start Ray here) or a "
                                      "cluster ADDRESS (needs the ray extra)."),
    replicas: int = typer.Option(1, help="Ray Serve replicas of the server (with --ray)."),
) -> None:
    """Serve models over HTTP: classify, embeddings, answer, completions and chat (OpenAI-compatible), with dynamic
    batching and a web page at /."""
    if threads is None and workers > 1:
        from leanlm.runtime.onnxruntime import thread_count

        threads = max(1, thread_count() // workers)  # N processes x all cores each would oversubscribe
    options = dict(locals())  # the parameters share the config's field names
    config = ServeConfig(**{f.name: options[f.name] for f in dataclasses.fields(ServeConfig)})
    from leanlm.errors import ConfigError

    named = parse_names(name or [])
    if not models and not named:
        raise ConfigError("give at least one model directory or bundled name (or --name NAME=DIR)")
    if not 0 < port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {port}")
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if replicas < 1:
        raise ConfigError(f"--replicas must be >= 1, got {replicas}")
    if ray is not None and workers > 1:
        raise ConfigError("--ray scales by --replicas; drop --workers")
    _, uvicorn = require_server()
    if ray is not None:
        from leanlm.serve.ray_serve import RayOptions, serve_with_ray

        configure_logging(access_log)
        from leanlm.serve.registry import check_specs

        _announce(check_specs(models or [], named), host, port, config, replicas, "ray replicas")
        serve_with_ray(models or [], named, config, RayOptions(address=ray, num_replicas=replicas, host=host,
                                                               port=port))
        return
    from leanlm.serve.app import create_app
    from leanlm.serve.registry import ModelRegistry

    log_level = "warning"
    if workers > 1:
        # each worker loads its own models (uvicorn spawns them): check the specs here, once, so a
        # typo is one red line rather than N tracebacks
        from leanlm.serve.registry import check_specs
        from leanlm.serve.workers import ENV, FACTORY, spec_json

        names = check_specs(models or [], named)
        os.environ[ENV] = spec_json(models or [], named, config, access_log)
        _announce(names, host, port, config, workers)
        uvicorn.run(FACTORY, factory=True, workers=workers, host=host, port=port, log_level=log_level,
                    access_log=False, timeout_graceful_shutdown=int(max(5, config.timeout_s)))
        return
    registry = ModelRegistry.load(models or [], config, named)
    configure_logging(access_log)
    _announce(registry.names(), host, port, config, workers)
    # uvicorn's SIGTERM handling stops accepting, lets in-flight requests finish, then runs our
    # shutdown (batchers drain and close)
    uvicorn.run(create_app(registry), host=host, port=port, log_level=log_level, access_log=False,
                timeout_graceful_shutdown=int(max(5, config.timeout_s)))


def configure_logging(access_log: bool) -> None:
    """One JSON line per request on stderr (the `leanlm.serve` logger), or only warnings."""
    log = logging.getLogger("leanlm.serve")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO if access_log else logging.WARNING)
    log.propagate = False


def _announce(names: List[str], host: str, port: int, config: ServeConfig, workers: int,
              unit: str = "workers") -> None:
    typer.echo(f"leanlm serve: {', '.join(names)} on http://{host}:{port} (max_batch={config.max_batch}, "
               f"max_wait_ms={config.max_wait_ms:g}, max_queue={config.max_queue}"
               + (f", threads={config.threads}" if config.threads else "")
               + (f", {unit}={workers})" if workers > 1 or unit != "workers" else ")"), err=True)
