"""A tiny classifier and a tiny real dataset for the search tests, and a timer that trusts no clock."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """300 real movie-snippet texts as a local CSV (the search splits it 80/10/10)."""
    from leanlm.data import load_splits

    s = load_splits("movie-snippets", seed=0).train
    path = tmp_path_factory.mktemp("optdata") / "snippets.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for t, y in list(zip(s.texts, s.labels))[:300]:
            w.writerow([t, s.label_names[y]])
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_clf, tmp_path_factory) -> Path:
    return tiny_clf.save(tmp_path_factory.mktemp("optmodel") / "tiny-clf")


def fake_speed(model) -> float:
    """Deterministic 'throughput' from what was done to the model (no real timing in tests)."""
    kinds = [t.get("type") for t in model.record.techniques]
    speed = 100.0
    if any(k and k.startswith("int8") for k in kinds):
        speed *= 2.0
    if "heads" in kinds:
        speed *= 1.3
    if "layers" in kinds:
        speed *= 1.6
    return speed


def fake_timer(models, threads):
    return [{"throughput_seq_s": fake_speed(m), "latency_ms_p50": 1000.0 / fake_speed(m)} for m in models]


# a tiny, fast protocol: few validation/test texts, no peers, no real-traffic passes
FAST = dict(methods=("int8-dynamic", "heads", "layers"), backend="torch", peers=(), shape="4x32", eval_limit=24,
            test_limit=24, warmup=0, repeats=1, throughput_repeats=1, final_repeats=1, traffic_repeats=0,
            noise_repeats=2, bootstrap=50, calibration_size=16, final_models=2, threads=(1,))
