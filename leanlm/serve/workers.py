"""`leanlm serve --workers N`: N uvicorn worker processes sharing one port.

The server keeps no state between requests, so it scales by replicas. uvicorn's own supervisor
starts the workers (and restarts one that dies); each worker imports this module and calls
`app()`, which loads its own copy of the models from the serve arguments the parent put in
the environment (a spawned process inherits the environment, not the parent's objects).

Example:
    >>> os.environ[ENV] = spec_json(["runs/sentiment"], {}, ServeConfig(), access_log=True)
    >>> uvicorn.run("leanlm.serve.workers:app", factory=True, workers=2, port=8000)
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from leanlm.serve.config import ServeConfig

ENV = "LEANLM_SERVE_SPEC"
FACTORY = "leanlm.serve.workers:app"


def spec_json(models: Sequence[str], named: dict[str, str], config: ServeConfig, access_log: bool) -> str:
    """What a worker needs to rebuild the server, as JSON. Relative model paths are made
    absolute, so a worker that starts elsewhere still finds them."""

    def absolute(spec: str) -> str:
        p = Path(spec).expanduser()
        return str(p.resolve()) if p.exists() else spec

    return json.dumps({"models": [absolute(s) for s in models], "named": {k: absolute(v) for k, v in named.items()},
                       "config": config.to_dict(), "access_log": access_log})


def app() -> Any:
    """The ASGI app for one worker process (uvicorn calls this factory in every worker)."""
    from leanlm.errors import ConfigError
    from leanlm.serve.app import create_app
    from leanlm.serve.cli import configure_logging
    from leanlm.serve.registry import ModelRegistry

    raw = os.environ.get(ENV)
    if not raw:
        raise ConfigError(f"{FACTORY} needs {ENV} (start it with `leanlm serve --workers N`)")
    spec = json.loads(raw)
    configure_logging(spec["access_log"])
    return create_app(ModelRegistry.load(spec["models"], ServeConfig.from_dict(spec["config"]), spec["named"]))
