"""`leanlm serve ... --ray local|ADDRESS [--replicas N]`: the same FastAPI app as Ray Serve replicas.

Each replica builds the whole app (`create_app` over its own copy of the models) when Ray starts
it, through `serve.ingress`'s late-bound `__serve_build_asgi_app__`, so the app's lifespan (index
build, warm-up, batchers closing) runs in every replica and nothing model-sized is pickled: a
replica gets the serve arguments as JSON, as a `--workers` process does. Ray's proxy routes each
HTTP request to a replica; `num_replicas` fixes their count, `max_replicas` turns on Ray's
autoscaling between the two. Only this module imports ray, so the default path never does.

Example:
    >>> app = deployment(["runs/sentiment"], {}, ServeConfig(), RayOptions(num_replicas=2))
    >>> ray.init(num_cpus=2); serve.start(http_options={"port": 8000}); serve.run(app, route_prefix="/")
"""
from __future__ import annotations

import json
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from leanlm.config import BaseConfig, check
from leanlm.errors import UnsupportedError
from leanlm.serve.config import ServeConfig

APP_NAME = "leanlm"


def require_ray() -> Any:
    """ray.serve (the `ray` extra), or a one-line message saying what to install."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise UnsupportedError("--ray needs Ray Serve: pip install 'leanlm[ray]'") from None
    return ray, serve


@dataclass(frozen=True)
class RayOptions(BaseConfig):
    """Where and how many replicas Ray Serve runs.

    Args:
        address: "local" starts a Ray instance in this process; anything else is a cluster address
            for `ray.init(address=...)` ("auto", "ray://host:10001").
        num_replicas: replicas to start (the minimum, with autoscaling).
        max_replicas: when greater than num_replicas, Ray autoscales between the two.
        target_ongoing_requests: autoscaling's per-replica load target.
        num_cpus: CPUs Ray reserves per replica (fractions let replicas share cores).
        host, port: where Ray's HTTP proxy listens.

    Example:
        >>> RayOptions(address="local", num_replicas=1, max_replicas=4)
    """

    address: str = "local"
    num_replicas: int = 1
    max_replicas: Optional[int] = None
    target_ongoing_requests: float = 32.0
    num_cpus: float = 1.0
    host: str = "127.0.0.1"
    port: int = 8000

    def validate(self) -> None:
        check(isinstance(self.address, str) and self.address.strip() != "", "address must be 'local' or a Ray address")
        check(isinstance(self.num_replicas, int) and self.num_replicas >= 1,
              f"num_replicas must be an integer >= 1, got {self.num_replicas!r}")
        check(self.max_replicas is None or (isinstance(self.max_replicas, int) and self.max_replicas >= self.num_replicas),
              f"max_replicas must be >= num_replicas ({self.num_replicas}), got {self.max_replicas!r}")
        check(self.target_ongoing_requests > 0, "target_ongoing_requests must be > 0")
        check(self.num_cpus > 0, f"num_cpus must be > 0, got {self.num_cpus!r}")
        check(isinstance(self.port, int) and 0 < self.port < 65536, f"port must be in 1..65535, got {self.port!r}")

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments for `serve.deployment`: fixed replicas or an autoscaling_config."""
        opts: dict[str, Any] = {"ray_actor_options": {"num_cpus": self.num_cpus}}
        if self.max_replicas and self.max_replicas > self.num_replicas:
            opts["autoscaling_config"] = {"min_replicas": self.num_replicas, "max_replicas": self.max_replicas,
                                          "target_ongoing_requests": self.target_ongoing_requests}
        else:
            opts["num_replicas"] = self.num_replicas
        return opts


def build_app(spec: str) -> Any:
    """The FastAPI app of one replica, from the serve arguments as JSON (see workers.spec_json)."""
    from leanlm.serve.app import create_app
    from leanlm.serve.registry import ModelRegistry

    s = json.loads(spec)
    return create_app(ModelRegistry.load(s["models"], ServeConfig.from_dict(s["config"]), s["named"]))


def deployment(models: Sequence[str], named: dict[str, str], config: ServeConfig, options: RayOptions) -> Any:
    """A bound Ray Serve application serving the leanlm app (pass it to `serve.run`)."""
    from leanlm.serve.workers import spec_json

    _, serve = require_ray()
    spec = spec_json(models, named, config, access_log=False)

    @serve.deployment(name=APP_NAME, **options.deployment_options())
    @serve.ingress()
    class LeanlmServer:
        def __init__(self, spec: str):
            self.spec = spec

        def __serve_build_asgi_app__(self) -> Any:
            return build_app(self.spec)

    return LeanlmServer.bind(spec)


def start(models: Sequence[str], named: dict[str, str], config: ServeConfig, options: RayOptions,
          num_cpus: int | None = None) -> str:
    """Connect to (or start) Ray, start Serve's proxy on options.host:port and deploy; returns the URL.

    Args:
        num_cpus: CPUs of a local Ray instance (default: all).
    """
    ray, serve = require_ray()
    if not ray.is_initialized():
        # replicas are fresh processes: they must import this checkout's leanlm, as the driver does
        root = str(Path(__file__).resolve().parents[2])
        env = {"env_vars": {"PYTHONPATH": root, "TOKENIZERS_PARALLELISM": "false"}}
        if options.address == "local":
            ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=env, log_to_driver=False)
        else:
            ray.init(address=options.address, runtime_env=env, log_to_driver=False)
    serve.start(http_options={"host": options.host, "port": options.port})
    serve.run(deployment(models, named, config, options), name=APP_NAME, route_prefix="/")
    return f"http://{options.host}:{options.port}"


def stop() -> None:
    """Delete the deployment and shut Serve and (a local) Ray down."""
    ray, serve = require_ray()
    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def serve_with_ray(models: Sequence[str], named: dict[str, str], config: ServeConfig, options: RayOptions) -> None:
    """`leanlm serve --ray`: deploy, then block until SIGINT/SIGTERM, then shut down."""
    start(models, named, config, options)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    stop()
