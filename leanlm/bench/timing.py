"""The timing protocol of `leanlm.bench.measure`: threads, the machine, inputs and interleaved rounds.

Fixed-shape timing: the same real sentences for every model, padded/truncated to exactly
`seq_len` tokens, untimed warm-up calls, then latency and throughput calls in interleaved rounds
whose model order rotates (`rotated`). Real-traffic timing: texts in their original order,
batches padded only to their own longest text, rotated batch by batch. Threads are set
explicitly (torch's intra-op threads and LEANLM_THREADS for the ORT/OpenVINO runners).

Example:
    >>> with threads_set(2):
    ...     rows = _speed([fp32, int8], BenchConfig(repeats=10), bench_texts())
"""
from __future__ import annotations

import contextlib
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch

from leanlm.artifact import LeanModel
from leanlm.errors import LeanlmError
from leanlm.runtime.sentences import SENTENCES

if TYPE_CHECKING:
    from leanlm.bench.measure import BenchConfig

THREADS_ENV = "LEANLM_THREADS"


# ----------------------------------------------------------------------------- threads, machine

def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads and LEANLM_THREADS (read by the ORT/OpenVINO runners)."""
    n = int(n or usable_cores())
    torch.set_num_threads(n)
    os.environ[THREADS_ENV] = str(n)
    return n


@contextlib.contextmanager
def threads_set(n: int | None) -> Iterator[int]:
    """Set threads for a block (see `set_threads`), then restore torch's setting and LEANLM_THREADS."""
    torch_before, env_before = torch.get_num_threads(), os.environ.get(THREADS_ENV)
    try:
        yield set_threads(n)
    finally:
        torch.set_num_threads(torch_before)
        if env_before is None:
            os.environ.pop(THREADS_ENV, None)
        else:
            os.environ[THREADS_ENV] = env_before


def current_threads() -> int:
    """Threads a runner should use: LEANLM_THREADS if set, else torch's current setting."""
    try:
        n = int(os.environ.get(THREADS_ENV, ""))
        if n >= 1:
            return n
    except ValueError:
        pass
    return torch.get_num_threads()


_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, instruction-set flags, memory, library versions, threads, load."""
    cpu, flags, mem_gb = platform.processor() or platform.machine(), set(), None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu in ("", platform.machine(), platform.processor()):
                cpu = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    versions = {d: _version(d) for d in ("leanlm", "torch", "transformers", "torchao", "onnxruntime", "openvino")}
    return {
        "cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable_cores(),
        "flags": {f: f in flags for f in _FLAGS}, "memory_gb": mem_gb,
        "platform": platform.platform(), "python": platform.python_version(),
        "versions": {k: v for k, v in versions.items() if v}, "threads": current_threads(),
        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


# ----------------------------------------------------------------------------- inputs and timing

def bench_texts(data: Any = None, n: int = 64) -> list[str]:
    """Real sentences for timing: the first `n` texts of `data` (a TextDataset) or the built-in list."""
    texts = list(getattr(data, "texts", None) or SENTENCES)[:n]
    return texts or list(SENTENCES)


def fixed_batch(model: LeanModel, texts: Sequence[str], batch: int, seq_len: int) -> dict[str, torch.Tensor]:
    """`batch` texts (cycled) tokenized to exactly (batch, seq_len) tokens."""
    if seq_len > model.max_length:
        raise LeanlmError(f"seq_len {seq_len} exceeds the model's maximum length {model.max_length}")
    chosen = [texts[i % len(texts)] for i in range(batch)]
    return model.encode(chosen, max_length=seq_len, padding="max_length")


def _percentile(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q))


def _time_call(model: LeanModel, batch: dict[str, torch.Tensor]) -> float:
    t0 = time.perf_counter()
    model(**batch)
    return time.perf_counter() - t0


def rotated(n: int, r: int) -> list[int]:
    """Model order of interleaved round `r`: 0..n-1 shifted by r. Each model takes every position in
    turn, and the first of a round follows the last of the previous one, so no model is always timed
    first or always right after the same model (whose cache footprint it pays for)."""
    k = r % n if n else 0
    return list(range(k, n)) + list(range(k))


def _speed(models: Sequence[LeanModel], config: BenchConfig, texts: Sequence[str], tick: Any = None) -> list[dict]:
    """Time all models in interleaved rounds; one dict of speed figures per model."""
    tick = tick or (lambda *_: None)
    lat_in = [fixed_batch(m, texts, config.latency_batch, config.seq_len) for m in models]
    tp_in = [fixed_batch(m, texts, config.throughput_batch, config.seq_len) for m in models]
    first = []
    for m, a, b in zip(models, lat_in, tp_in):
        first.append(_time_call(m, a) + _time_call(m, b))  # first calls may build caches
        for _ in range(config.warmup):
            m(**a)
            m(**b)
        tick("warm-up")
    lat: list[list[float]] = [[] for _ in models]
    tp: list[list[float]] = [[] for _ in models]
    for r in range(config.repeats):
        for i in rotated(len(models), r):
            lat[i].append(_time_call(models[i], lat_in[i]))
        tick("latency")
    for r in range(config.throughput_repeats):
        for i in rotated(len(models), r):
            tp[i].append(_time_call(models[i], tp_in[i]))
        tick("throughput")
    out = []
    for i in range(len(models)):
        med = float(np.median(tp[i]))
        out.append({
            "latency_ms_p50": 1e3 * _percentile(lat[i], 50), "latency_ms_p99": 1e3 * _percentile(lat[i], 99),
            "throughput_seq_s": config.throughput_batch / med, "throughput_ms_p50": 1e3 * med,
            "throughput_spread_pct": 100 * (max(tp[i]) - min(tp[i])) / med, "first_call_s": first[i],
        })
    return out


# ----------------------------------------------------------------------------- real-traffic mode

def traffic_batches(model: LeanModel, texts: Sequence[str], batch: int, max_length: int) -> list[dict[str, torch.Tensor]]:
    """`texts` in their order, `batch` at a time, each batch padded only to its own longest text."""
    return [model.encode(list(texts[i : i + batch]), max_length=max_length) for i in range(0, len(texts), batch)]


def _traffic(models: Sequence[LeanModel], config: BenchConfig, texts: Sequence[str], tick: Any = None) -> list[dict]:
    """Time all models on real traffic: every pass runs each batch on every model, rotated per batch.

    Interleaving per batch (not per pass) keeps the models' timings of one batch seconds apart,
    so drift on a shared machine cannot favour whichever model ran its whole pass in a quiet spell.
    """
    tick = tick or (lambda *_: None)
    inputs = [traffic_batches(m, texts, config.traffic_batch, config.seq_len) for m in models]
    nb = len(inputs[0])
    if config.warmup:  # variable shapes: dynamic-shape runtimes plan kernels per new shape on first sight
        for m, batches in zip(models, inputs):
            for b in batches:
                m(**b)
    tick("traffic warm-up")
    calls: list[list[float]] = [[] for _ in models]
    passes: list[list[float]] = [[] for _ in models]
    for p in range(config.traffic_repeats):
        total = [0.0] * len(models)
        for j in range(nb):
            for i in rotated(len(models), p * nb + j):
                dt = _time_call(models[i], inputs[i][j])
                calls[i].append(dt)
                total[i] += dt
        for i, t in enumerate(total):
            passes[i].append(t)
        tick("traffic")
    out = []
    for i in range(len(models)):
        med = float(np.median(passes[i]))
        out.append({"traffic_texts_s": len(texts) / med, "traffic_batch_ms_p50": 1e3 * _percentile(calls[i], 50),
                    "traffic_batch_ms_p99": 1e3 * _percentile(calls[i], 99),
                    "traffic_spread_pct": 100 * (max(passes[i]) - min(passes[i])) / med, "traffic_texts": len(texts)})
    return out
