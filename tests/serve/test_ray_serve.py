"""Ray Serve: the leanlm app as two replicas of a tiny classifier on a local Ray instance, over HTTP."""
from __future__ import annotations

import time

import httpx
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def test_two_ray_replicas_serve_classify(tmp_path):
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'leanlm[ray]')")
    import ray

    from leanlm.models.tiny import tiny_encoder
    from leanlm.serve import ServeConfig
    from leanlm.serve.process import free_port
    from leanlm.serve.ray_serve import RayOptions, start, stop

    clf = tiny_encoder().save(tmp_path / "clf")
    options = RayOptions(num_replicas=2, num_cpus=0.5, port=free_port())
    try:
        url = start([str(clf)], {}, ServeConfig(max_wait_ms=5), options, num_cpus=2)
        pids = set()
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=url, timeout=30) as c:
            while time.monotonic() < deadline and len(pids) < 2:  # Ray's proxy spreads requests over replicas
                r = c.post("/v1/classify", json={"input": ["a fine film", "a dull one"]})
                assert r.status_code == 200, r.text
                assert [d["label"] in ("negative", "positive") for d in r.json()["data"]] == [True, True]
                pids.add(c.get("/health").json()["pid"])
            assert c.get("/ready").json()["models"] == ["clf"]
        assert len(pids) == 2, pids
        assert ray.is_initialized()
    finally:
        stop()
