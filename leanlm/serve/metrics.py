"""What /metrics shows: request counters and histograms, rendered by `prometheus-client`.

Prometheus scrapes `GET /metrics` (its text format, what text-embeddings-inference and vLLM
expose); `GET /metrics?format=json` is the same state as JSON with p50/p99 over a recent window,
for people and the web page. Histograms are cumulative since start, as Prometheus expects, so a
dashboard computes any quantile over any interval (`histogram_quantile` over `rate(...)`).

Each app owns a `CollectorRegistry` (never the process-global one): several apps in one process,
as in the tests, must not share or double-register series. The collector reads the counters the
app and its batchers already keep at scrape time, so the batching path carries no Prometheus code.

Series (all prefixed `leanlm_`): requests_total{path,model,status}, request_duration_seconds{path},
model_requests_total / rejected_total / batches_total / failed_batches_total / queue_depth and the
queue_time_seconds, batch_run_seconds and batch_size histograms, each by {model,capability}.
"""
from __future__ import annotations

import bisect
import collections
import contextvars
import os
import time
from typing import Any, Iterable, Sequence

# Request latency and queue time (seconds): 1 ms .. 30 s, the range a CPU encoder or decoder spans.
TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

# The model a request was routed to, for the request counters' `model` label: the middleware puts a
# fresh dict here and `ModelRegistry.get` fills it in (a dict, because the endpoint runs in a copy
# of the middleware's context: a new value set there would not come back, a mutated dict does).
_ROUTED: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("leanlm_routed", default=None)


def routing() -> dict[str, str]:
    """Start recording which model this request is routed to (called by the middleware)."""
    slot: dict[str, str] = {}
    _ROUTED.set(slot)
    return slot


def note_model(name: str) -> None:
    """Record the model the current request was routed to (no-op outside a request)."""
    slot = _ROUTED.get()
    if slot is not None:
        slot["model"] = name


class Histogram:
    """A cumulative histogram: counts per bucket upper bound, plus the sum and count of observations."""

    def __init__(self, bounds: Sequence[float] = TIME_BUCKETS):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float, count: int = 1) -> None:
        """Record `count` observations of `value`."""
        self.counts[bisect.bisect_left(self.bounds, value)] += count  # bound >= value: Prometheus' `le`
        self.sum += value * count

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative (le, count) pairs ending with +Inf, as Prometheus' exposition wants them."""
        out, total = [], 0
        for bound, n in zip([*map(_le, self.bounds), "+Inf"], self.counts):
            total += n
            out.append((bound, total))
        return out


def _le(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else repr(float(bound))


def percentiles(samples: Iterable[float]) -> dict[str, float]:
    """p50/p99 (nearest rank) of a window of samples, in the samples' unit."""
    s = sorted(samples)
    if not s:
        return {"p50": 0.0, "p99": 0.0, "count": 0}

    def rank(q: float) -> float:
        return round(s[min(len(s) - 1, max(0, int(q * len(s) + 0.5) - 1))], 3)

    return {"p50": rank(0.50), "p99": rank(0.99), "count": len(s)}


class Metrics:
    """Request counts by endpoint, model and status; latency as a histogram and a recent window."""

    def __init__(self, window: int = 4096):
        self.started = time.time()
        self.counts: collections.Counter = collections.Counter()  # (path, model, status) -> n
        self.latency: dict[str, collections.deque] = collections.defaultdict(lambda: collections.deque(maxlen=window))
        self.duration: dict[str, Histogram] = collections.defaultdict(Histogram)

    def observe(self, path: str, status: int, ms: float, model: str = "") -> None:
        self.counts[(path, model, status)] += 1
        self.latency[path].append(ms)
        self.duration[path].observe(ms / 1e3)

    def snapshot(self, registry: Any) -> dict[str, Any]:
        """Everything as JSON (what `?format=json` returns)."""
        by_path: dict[str, dict[str, int]] = collections.defaultdict(lambda: collections.defaultdict(int))
        for (path, _, status), n in sorted(self.counts.items()):
            by_path[path][str(status)] += n
        models = registry.metrics()
        return {
            "pid": os.getpid(),  # with --workers N each worker counts its own requests: this says whose
            "uptime_s": round(time.time() - self.started, 3),
            "requests": {p: dict(v) for p, v in by_path.items()},
            "latency_ms": {path: percentiles(window) for path, window in self.latency.items()},
            "queue_depth": sum(m.get("queue_depth", 0) for caps in models.values() for m in caps.values()),
            "rejected": sum(m.get("rejected", 0) for caps in models.values() for m in caps.values()),
            "models": models,
        }

    def prometheus(self, registry: Any) -> tuple[bytes, str]:
        """(body, content type) in Prometheus' text exposition format, rendered by prometheus-client."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        reg = CollectorRegistry(auto_describe=False)
        reg.register(_Collector(self, registry))
        return generate_latest(reg), CONTENT_TYPE_LATEST


class _Collector:
    """A prometheus-client collector over the app's `Metrics` and every model's batcher stats."""

    def __init__(self, metrics: Metrics, registry: Any):
        self.metrics, self.registry = metrics, registry

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        m = self.metrics
        requests = CounterMetricFamily("leanlm_requests", "HTTP requests by path, model and status.",
                                       labels=["path", "model", "status"])
        for (path, model, status), n in sorted(m.counts.items()):
            requests.add_metric([path, model, str(status)], n)
        yield requests
        duration = HistogramMetricFamily("leanlm_request_duration_seconds",
                                         "Time to the response's start, by path.", labels=["path"])
        for path, h in sorted(m.duration.items()):
            duration.add_metric([path], h.buckets(), h.sum)
        yield duration

        per = [((model, cap), b) for model, served in self.registry.models.items()
               for cap, b in served.batchers().items()]
        fam = {key: CounterMetricFamily(f"leanlm_{key}", text, labels=["model", "capability"]) for key, text in (
            ("model_requests", "Requests queued for a model's batcher."),
            ("rejected", "Requests shed with 429 because the queue was full."),
            ("batches", "Forward passes run."),
            ("batch_items", "Texts or prompts run in batches."),
            ("failed_batches", "Batches the model failed (their requests got 500)."))}
        depth = GaugeMetricFamily("leanlm_queue_depth", "Requests waiting for a batch.", labels=["model", "capability"])
        queue = HistogramMetricFamily("leanlm_queue_time_seconds", "Time a request waited for its batch.",
                                      labels=["model", "capability"])
        run = HistogramMetricFamily("leanlm_batch_run_seconds", "Time one batch ran on the model.",
                                    labels=["model", "capability"])
        size = HistogramMetricFamily("leanlm_batch_size", "Items per forward pass.", labels=["model", "capability"])
        for labels, b in per:
            s = b.stats
            for key, value in (("model_requests", s.requests), ("rejected", s.rejected), ("batches", s.batches),
                               ("batch_items", s.items), ("failed_batches", s.failed_batches)):
                fam[key].add_metric(list(labels), value)
            depth.add_metric(list(labels), b.queue_depth)
            queue.add_metric(list(labels), s.queue_hist.buckets(), s.queue_hist.sum)
            run.add_metric(list(labels), s.run_hist.buckets(), s.run_hist.sum)
            sizes = Histogram(SIZE_BUCKETS)
            for n, count in s.sizes.items():
                sizes.observe(n, count)
            size.add_metric(list(labels), sizes.buckets(), sizes.sum)
        yield from fam.values()
        yield from (depth, queue, run, size)
        uptime = GaugeMetricFamily("leanlm_uptime_seconds", "Seconds since the server started.")
        uptime.add_metric([], time.time() - m.started)
        yield uptime
