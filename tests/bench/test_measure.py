"""The benchmark protocol on tiny real models: config validation, inputs, schema, ratios, memory.

No speed assertions: timings on a shared CPU are noise; only their shape and sanity are checked.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from leanlm.bench.measure import (ROW_FIELDS, BenchConfig, BenchResult, benchmark, measure_speed, record_metrics,
                                  weight_stats)
from leanlm.bench.timing import current_threads, fixed_batch, machine_info, set_threads
from leanlm.data import TextDataset
from leanlm.errors import ConfigError, LeanlmError

FAST = dict(warmup=1, repeats=3, throughput_repeats=2, throughput_batch=4, seq_len=32)
TEXTS = ["A gorgeous, witty, seductive movie.", "The plot is a mess and the acting is worse.",
         "It's a charming and often affecting journey.", "Dull, lifeless and far too long.",
         "An utterly delightful film from start to finish.", "I wanted to walk out after twenty minutes."]


@pytest.mark.parametrize("bad", [dict(seq_len=0), dict(repeats=0), dict(throughput_batch=-1), dict(warmup=-1),
                                 dict(threads=0), dict(threads=10**6), dict(seq_len=True), dict(memory="yes"),
                                 dict(eval_limit=0), dict(latency_batch=1.5)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ConfigError):
        BenchConfig(**bad)


def test_config_round_trip():
    c = BenchConfig(repeats=7, threads=1, eval_limit=10)
    assert BenchConfig.from_dict(c.to_dict()) == c


def test_threads():
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1 and current_threads() == 1
    finally:
        set_threads(before)


def test_fixed_batch_shapes(tiny_clf):
    b = fixed_batch(tiny_clf, TEXTS, 5, 40)
    assert b["input_ids"].shape == (5, 40) and b["attention_mask"].shape == (5, 40)
    with pytest.raises(LeanlmError, match="maximum length"):
        fixed_batch(tiny_clf, TEXTS, 1, 10_000)


def test_measure_speed(tiny_clf):
    s = measure_speed(tiny_clf, BenchConfig(**FAST), TEXTS)
    for k in ("latency_ms_p50", "latency_ms_p99", "throughput_seq_s"):
        assert math.isfinite(s[k]) and s[k] > 0
    assert s["latency_ms_p99"] >= s["latency_ms_p50"]


def test_weight_stats_counts_quantized_storage(tiny_clf):
    from leanlm.compress.quantize import quantize
    from leanlm.compress.quantize.int8_dynamic import Int8Dynamic

    fb, fp = weight_stats(tiny_clf)
    qb, qp = weight_stats(quantize(tiny_clf, Int8Dynamic()))
    assert fp == qp and 0 < qb < fb


@pytest.fixture(scope="module")
def two_model_result(tiny_clf):
    from leanlm.compress.quantize import quantize
    from leanlm.compress.quantize.int8_dynamic import Int8Dynamic

    data = TextDataset(TEXTS, [1, 0, 1, 0, 1, 0], ["negative", "positive"], "hand")
    q = quantize(tiny_clf, Int8Dynamic())
    before = json.dumps(tiny_clf.record.to_dict())
    res = benchmark({"fp32": tiny_clf, "int8": q}, data=data, config=BenchConfig(**FAST), progress=False)
    assert json.dumps(tiny_clf.record.to_dict()) == before and tiny_clf.path is None  # caller's model untouched
    return res


POSITIVE = ("seq_len", "latency_batch", "throughput_batch", "threads", "latency_ms_p50", "latency_ms_p99",
            "throughput_seq_s", "throughput_ms_p50", "artifact_bytes", "weight_bytes", "params", "peak_rss_mb",
            "model_rss_mb", "accuracy", "macro_f1", "eval_n", "agreement", "throughput_ratio", "latency_ratio",
            "size_ratio")


def test_benchmark_rows_schema_and_ratios(two_model_result):
    res = two_model_result
    assert [r["name"] for r in res.rows] == ["fp32", "int8"] and res.reference == "fp32"
    for r in res.rows:
        assert set(r) == set(ROW_FIELDS)
        for k in POSITIVE:
            assert isinstance(r[k], (int, float)) and math.isfinite(r[k]) and r[k] > 0, (r["name"], k, r[k])
        assert r["latency_ms_p99"] >= r["latency_ms_p50"]
        assert r["notes"] == []
    ref = res.row("fp32")
    assert ref["throughput_ratio"] == ref["latency_ratio"] == ref["size_ratio"] == 1.0
    assert ref["accuracy_delta_pts"] == 0.0 and ref["agreement"] == 1.0
    assert res.row("int8")["techniques"] == ["int8-dynamic"]
    assert res.row("int8")["weight_bytes"] < ref["weight_bytes"]
    assert res.machine["cores"] >= 1 and "torch" in res.machine["versions"]


def test_result_json_round_trip(two_model_result, tmp_path):
    p = two_model_result.to_json(tmp_path / "r.json")
    back = BenchResult.from_json(p)
    assert back.rows == json.loads(json.dumps(two_model_result.to_dict()))["rows"]
    assert "| fp32 (ref) |" in back.markdown()


def test_record_metrics(two_model_result, tiny_clf, tmp_path):
    m = tiny_clf.clone()
    record_metrics(m, two_model_result.row("fp32"), two_model_result.machine)
    assert m.record.metrics["accuracy"] == two_model_result.row("fp32")["accuracy"]
    assert m.record.metrics["bench"]["throughput_seq_s"] > 0 and "cpu" in m.record.metrics["bench"]["machine"]
    from leanlm.artifact import read_record

    assert read_record(m.save(tmp_path / "m")).metrics["bench"]["name"] == "fp32"


def test_benchmark_embeddings_list_and_errors(tiny_emb):
    from leanlm.models.tiny import tiny_encoder

    other = tiny_encoder("feature-extraction", seed=1)
    res = benchmark([tiny_emb, other], config=BenchConfig(**FAST, memory=False), progress=False)
    names = [r["name"] for r in res.rows]
    assert len(set(names)) == 2 and res.reference == names[0]
    assert res.rows[0]["embedding_mean_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert res.rows[1]["embedding_mean_cosine"] < 0.999  # different weights, different embeddings
    assert res.rows[0]["peak_rss_mb"] is None and res.rows[0]["accuracy"] is None
    with pytest.raises(LeanlmError, match="reference"):
        benchmark({"a": tiny_emb}, config=BenchConfig(**FAST, memory=False), reference="b", progress=False)
    with pytest.raises(LeanlmError, match="at least one"):
        benchmark({}, progress=False)


def test_compile_model_matches_eager_on_ragged_batches(tiny_clf):
    from leanlm.runtime.torch_compile import compile_model, is_compiled

    c = compile_model(tiny_clf, shapes=[(4, 32)])
    assert is_compiled(c) and c.runner.compile_s > 0 and c.record.extra["runtime"]["name"] == "torch.compile"
    assert "runtime" not in tiny_clf.record.extra
    for texts in (TEXTS[:3], TEXTS[:4], TEXTS[:1]):  # padded up to the (4, 32) bucket and sliced back
        batch = tiny_clf.encode(texts, max_length=32)
        torch.testing.assert_close(c(**batch), tiny_clf(**batch), atol=1e-4, rtol=1e-4)
    with pytest.raises(LeanlmError):
        compile_model(tiny_clf, mode="fastest")
    row = benchmark({"eager": tiny_clf, "compiled": c}, config=BenchConfig(**FAST, latency_batch=4, memory=False),
                    progress=False).row("compiled")
    assert row["runtime"].startswith("torch.compile") and row["compile_s"] > 0


def test_benchmark_causal_lm_quality(tiny_lm):
    from leanlm.models.tiny import tiny_decoder

    res = benchmark({"a": tiny_lm, "b": tiny_decoder(seed=1)},
                    config=BenchConfig(**FAST, memory=False, lm_tokens=128), progress=False)
    a, b = res.row("a"), res.row("b")
    assert a["kl_divergence"] == pytest.approx(0.0, abs=1e-6) and a["agreement"] == 1.0
    assert b["kl_divergence"] > 0 and math.isfinite(b["perplexity"]) and b["perplexity"] > 1
    assert a["accuracy"] is None and b["throughput_ratio"] > 0


# ----------------------------------------------------------------------------- protocol: rotation, real traffic, intervals

def test_rounds_rotate_the_model_order():
    from leanlm.bench.timing import rotated

    orders = [rotated(3, r) for r in range(4)]
    assert orders == [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]] and rotated(1, 5) == [0]
    assert {o[0] for o in orders} == {0, 1, 2}  # every model takes every position, first included
    calls = [i for o in orders for i in o]
    assert {calls[k - 1] for k in range(1, len(calls)) if calls[k] == 1} == {0, 2}  # not always after the same one


def test_speed_rounds_are_rotated(tiny_clf, monkeypatch):
    import leanlm.bench.timing as timing

    calls: list[int] = []
    models = [tiny_clf.clone() for _ in range(3)]
    for k, m in enumerate(models):
        m.tag = k
    real = timing._time_call
    monkeypatch.setattr(timing, "_time_call", lambda m, b: calls.append(m.tag) or real(m, b))
    timing._speed(models, BenchConfig(**FAST | dict(warmup=0, repeats=3, throughput_repeats=1)), TEXTS)
    timed = calls[6:]  # after the first calls (latency + throughput per model)
    assert timed[:9] == [0, 1, 2, 1, 2, 0, 2, 0, 1] and timed[9:] == [0, 1, 2]


def test_traffic_batches_pad_per_batch(tiny_clf):
    from leanlm.bench.timing import traffic_batches

    texts = TEXTS[:5] + ["short", "tiny"]
    batches = traffic_batches(tiny_clf, texts, 3, 32)
    assert [b["input_ids"].shape[0] for b in batches] == [3, 3, 1]
    widths = [b["input_ids"].shape[1] for b in batches]
    assert widths[2] < widths[0] <= 32 and len(set(widths)) > 1  # each padded to its own longest text
    assert all(b["attention_mask"][:, -1].any() for b in batches)  # no all-padding column at the end


@pytest.fixture(scope="module")
def traffic_result(tiny_clf):
    data = TextDataset(TEXTS * 3, [1, 0, 1, 0, 1, 0] * 3, ["negative", "positive"], "hand")
    other = tiny_clf.clone()
    with torch.no_grad():
        other.module.classifier.weight.mul_(-1)  # flips most predictions: a clearly worse model
    cfg = BenchConfig(**FAST, memory=False, traffic_repeats=2, traffic_batch=4, traffic_limit=14, bootstrap=500)
    return benchmark({"ref": tiny_clf, "other": other}, data=data, config=cfg, progress=False)


def test_real_traffic_rows(traffic_result):
    for r in traffic_result.rows:
        assert r["traffic_texts"] == 14
        for k in ("traffic_texts_s", "traffic_batch_ms_p50", "traffic_batch_ms_p99", "traffic_ratio"):
            assert math.isfinite(r[k]) and r[k] > 0, (r["name"], k)
        assert r["traffic_batch_ms_p99"] >= r["traffic_batch_ms_p50"]
    assert traffic_result.row("ref")["traffic_ratio"] == 1.0
    assert traffic_result.config["traffic_repeats"] == 2


def test_accuracy_delta_interval(traffic_result):
    ref, other = traffic_result.row("ref"), traffic_result.row("other")
    assert ref["accuracy_delta_low"] == ref["accuracy_delta_high"] == 0.0
    d = other["accuracy_delta_pts"]
    assert other["accuracy_delta_low"] <= d <= other["accuracy_delta_high"]
    assert other["accuracy_delta_low"] < other["accuracy_delta_high"] or other["agreement"] == 1.0


def test_protocol_defaults_are_backward_compatible(two_model_result):
    r = two_model_result.row("int8")
    assert r["traffic_texts_s"] is None and r["traffic_ratio"] is None  # real-traffic mode is opt-in
    assert r["accuracy_delta_low"] <= r["accuracy_delta_pts"] <= r["accuracy_delta_high"]


@pytest.mark.parametrize("bad", [dict(traffic_repeats=-1), dict(traffic_batch=0), dict(traffic_limit=0),
                                 dict(bootstrap=1.5), dict(bootstrap_seed=-1)])
def test_protocol_config_rejects_bad_values(bad):
    with pytest.raises(ConfigError):
        BenchConfig(**bad)
