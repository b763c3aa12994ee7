"""Scale-out on Ray: candidates are built and validated as Ray tasks; timing never overlaps them.

`RayExecutor.map(jobs)` submits one task per candidate (each reserving its own thread count as
`num_cpus`, and setting it) and waits for all of them; the search times the results only after
that, one at a time in the driver, while no task runs, so parallel builds never distort a speed
measurement. `--ray local` starts a local instance; `--ray ADDRESS` joins an existing cluster.
The default search stays in-process and needs no Ray.

Example:
    >>> leanlm.optimize("runs/sentiment", "runs/opt", data="movie-snippets", ray="local", parallel=2)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from leanlm.errors import UnsupportedError


def require_ray() -> Any:
    try:
        import ray
    except ModuleNotFoundError:
        raise UnsupportedError("--ray needs Ray: pip install 'leanlm[ray]'") from None
    return ray


def _build(job: dict) -> dict:
    from leanlm.optimize.trial import build_candidate

    return build_candidate(job)


class RayExecutor:
    """Runs `build_candidate` jobs as Ray tasks (a running instance is used as it is)."""

    def __init__(self, address: str):
        ray = require_ray()
        if not ray.is_initialized():
            root = str(Path(__file__).resolve().parents[2])  # workers import this leanlm, not another one
            env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}}
            if address == "local":
                ray.init(include_dashboard=False, runtime_env=env, log_to_driver=False)
            else:
                ray.init(address=address, runtime_env=env, log_to_driver=False)
        self.ray = ray
        self.parallel = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.task = ray.remote(_build)

    def map(self, jobs: list[dict]) -> list[dict]:
        refs = [self.task.options(num_cpus=j["candidate"]["threads"]).remote(j) for j in jobs]
        return self.ray.get(refs)  # all done before the caller times anything
