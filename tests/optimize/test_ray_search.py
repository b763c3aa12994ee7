"""A 2-trial search whose candidates are built as Ray tasks on a local instance."""
from __future__ import annotations

from pathlib import Path

import pytest

import leanlm

from conftest import FAST, fake_timer

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.ray
def test_search_builds_candidates_as_ray_tasks(tiny_model_dir, tiny_data, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}})
    try:
        res = leanlm.optimize(tiny_model_dir, tmp_path / "out", data=str(tiny_data), max_accuracy_drop=50.0,
                              trials=2, timer=fake_timer, progress=False, ray="local", parallel=2,
                              **FAST | {"methods": ("int8-dynamic", "heads")})
        assert len(res.trials) == 2 and {r["status"] for r in res.trials} == {"accepted"}
        assert leanlm.load(res.recommended).record.extra["optimize"]["search"]["ray"] == "local"
    finally:
        ray.shutdown()
