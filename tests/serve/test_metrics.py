"""/metrics' building blocks: cumulative histograms and percentile windows."""
from leanlm.serve.metrics import Histogram, note_model, percentiles, routing


def test_percentiles():
    assert percentiles([]) == {"p50": 0.0, "p99": 0.0, "count": 0}
    p = percentiles(list(range(1, 101)))
    assert p["p50"] == 50 and p["p99"] == 99 and p["count"] == 100


def test_histogram_is_cumulative_with_prometheus_le_semantics():
    h = Histogram((1, 2.5, 10))
    for v in (0.5, 1, 1.01, 2.5, 11):
        h.observe(v)
    assert h.buckets() == [("1", 2), ("2.5", 4), ("10", 4), ("+Inf", 5)]  # a value equal to a bound is in it
    assert h.sum == 0.5 + 1 + 1.01 + 2.5 + 11


def test_model_routing_is_recorded_only_inside_a_request():
    note_model("ignored")  # outside a request: nothing to fill, no error
    slot = routing()
    note_model("clf")
    assert slot == {"model": "clf"}
