"""One benchmark protocol for every model, backend and script of leanlm.

Same inputs for every model (real sentences, padded/truncated to exactly `seq_len` tokens so
shapes are fixed), warm-up first, latency at batch 1 (median and p99 over repeats), throughput at
batch 32, threads set explicitly (default: all cores). All models of one `benchmark` call are
timed in interleaved rounds (A B C, B C A, C A B, ...: each round's order is rotated, so no model
is always timed first or right after the same one), so load drift on a shared machine hurts all of them alike; every
speed claim is a ratio against the reference model measured in the same run. Peak memory is
measured in a fresh child process per model directory (ru_maxrss), never in this one.

Real-traffic mode (`BenchConfig.traffic_repeats`): the data's test texts in their original order,
batches of 32 padded only to their own longest text (what a user's traffic looks like), timed
interleaved and rotated batch by batch; texts/s and per-batch latency. Accuracy deltas come with a
paired-bootstrap interval (`leanlm.bench.stats`). The timing itself (threads, inputs, rotated
rounds) lives in `leanlm.bench.timing`; this module turns it into result rows.

Example:
    >>> res = benchmark({"fp32": fp32, "int8": int8}, data="movie-snippets")
    >>> res.print(); res.to_json("reports/bench.json")
"""
from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from leanlm.artifact import LeanModel, atomic_write_text, directory_size
from leanlm.bench.timing import _speed, _traffic, bench_texts, machine_info, threads_set, usable_cores
from leanlm.config import BaseConfig, check
from leanlm.errors import LeanlmError
# the benchmark's default inputs; defined in runtime/ (the lowest floor that needs them)
from leanlm.runtime.sentences import SENTENCES  # noqa: F401

SCHEMA = "leanlm.bench/1"


# ----------------------------------------------------------------------------- configuration

def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class BenchConfig(BaseConfig):
    """How to measure: shapes, repeats, threads, memory, evaluation size.

    Args:
        seq_len: tokens per input (inputs are padded/truncated to exactly this length).
        latency_batch: batch size of the latency measurement.
        throughput_batch: batch size of the throughput measurement.
        warmup: untimed calls per shape and model before timing.
        repeats: timed latency calls per model (p50/p99 over them).
        throughput_repeats: timed throughput calls per model (median).
        threads: intra-op threads (None = all usable cores).
        memory: measure peak RSS in a child process per model.
        eval_limit: evaluate accuracy on at most this many test examples (None = all).
        eval_batch_size: batch size for accuracy and fidelity passes.
        fidelity_texts: texts for embedding fidelity (feature-extraction models).
        lm_tokens: WikiText-2 test tokens for causal-lm perplexity / KL vs the reference (0 = skip).
        traffic_repeats: timed passes of the real-traffic mode over the data's test texts in their
            original order, batches padded only to their own longest text (0 = skip the mode).
        traffic_batch: texts per batch in the real-traffic mode.
        traffic_limit: real-traffic mode on at most this many test texts (None = all).
        bootstrap: paired-bootstrap resamples for the accuracy-delta interval (0 = no interval).
        bootstrap_seed: seed of those resamples.

    Example:
        >>> BenchConfig(repeats=10, threads=2)
    """

    seq_len: int = 128
    latency_batch: int = 1
    throughput_batch: int = 32
    warmup: int = 3
    repeats: int = 20
    throughput_repeats: int = 5
    threads: int | None = None
    memory: bool = True
    eval_limit: int | None = None
    eval_batch_size: int = 32
    fidelity_texts: int = 256
    lm_tokens: int = 2048
    traffic_repeats: int = 0
    traffic_batch: int = 32
    traffic_limit: int | None = None
    bootstrap: int = 2000
    bootstrap_seed: int = 0

    def validate(self) -> None:
        for name, low in (("seq_len", 1), ("latency_batch", 1), ("throughput_batch", 1), ("warmup", 0),
                          ("repeats", 1), ("throughput_repeats", 1), ("eval_batch_size", 1), ("fidelity_texts", 1), ("lm_tokens", 0)):
            v = getattr(self, name)
            check(_is_int(v) and v >= low, f"bench: {name} must be an integer >= {low}, got {v!r}")
        check(self.seq_len <= 32768, f"bench: seq_len {self.seq_len} is too large")
        cores = usable_cores()
        check(self.threads is None or (_is_int(self.threads) and 1 <= self.threads <= cores),
              f"bench: threads must be between 1 and {cores} (usable cores), got {self.threads!r}")
        check(self.eval_limit is None or (_is_int(self.eval_limit) and self.eval_limit >= 1),
              f"bench: eval_limit must be None or an integer >= 1, got {self.eval_limit!r}")
        check(isinstance(self.memory, bool), f"bench: memory must be true or false, got {self.memory!r}")
        self._validate_protocol()

    def _validate_protocol(self) -> None:
        """The real-traffic mode and the accuracy intervals."""
        for name, low in (("traffic_repeats", 0), ("traffic_batch", 1), ("bootstrap", 0), ("bootstrap_seed", 0)):
            v = getattr(self, name)
            check(_is_int(v) and v >= low, f"bench: {name} must be an integer >= {low}, got {v!r}")
        check(self.traffic_limit is None or (_is_int(self.traffic_limit) and self.traffic_limit >= 1),
              f"bench: traffic_limit must be None or an integer >= 1, got {self.traffic_limit!r}")


# ----------------------------------------------------------------------------- one model

def measure_speed(model: LeanModel, config: BenchConfig = BenchConfig(), texts: Sequence[str] | None = None) -> dict:
    """Latency (p50/p99 at latency_batch x seq_len) and throughput (throughput_batch x seq_len) of one model.

    Args:
        model: any LeanModel (any backend; compiled models should be compiled already).
        config: shapes, repeats and threads.
        texts: real sentences to tokenize (default: the built-in list).

    Example:
        >>> measure_speed(leanlm.load("minilm-l6"), BenchConfig(repeats=10))["throughput_seq_s"]
    """
    with threads_set(config.threads):
        return _speed([model], config, list(texts or SENTENCES))[0]


# ----------------------------------------------------------------------------- sizes and memory

def _tensor_bytes(t: torch.Tensor, seen: set) -> int:
    """Storage bytes of a tensor, looking inside tensor subclasses (torchao int8 data + scales)."""
    if type(t) in (torch.Tensor, torch.nn.Parameter):
        try:
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        except (RuntimeError, NotImplementedError):
            key = id(t)
        if key in seen:
            return 0
        seen.add(key)
        return t.numel() * t.element_size()
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(t, n), seen) for n in names if isinstance(getattr(t, n), torch.Tensor))
    return t.numel() * t.element_size()


def weight_stats(model: LeanModel) -> tuple[int | None, int | None]:
    """(weight bytes in memory, parameter count) of a PyTorch module; (None, None) for other backends."""
    if not isinstance(model.module, torch.nn.Module):
        return _composite_weight_stats(model)
    seen: set = set()
    nbytes = sum(_tensor_bytes(t, seen) for t in model.module.state_dict().values() if isinstance(t, torch.Tensor))
    params = sum(p.numel() for p in dict(model.module.named_parameters()).values())
    return int(nbytes), int(params)


# ----------------------------------------------------------------------------- results

ROW_FIELDS = (
    "name", "base_model", "task", "backend", "runtime", "techniques",
    "seq_len", "latency_batch", "throughput_batch", "threads",
    "latency_ms_p50", "latency_ms_p99", "throughput_seq_s", "throughput_ms_p50", "throughput_spread_pct",
    "compile_s", "artifact_bytes", "weight_bytes", "params", "peak_rss_mb", "model_rss_mb",
    "accuracy", "macro_f1", "eval_n", "agreement", "embedding_mean_cosine", "embedding_min_cosine",
    "perplexity", "kl_divergence",
    "throughput_ratio", "latency_ratio", "size_ratio", "accuracy_delta_pts",
    # real-traffic mode (BenchConfig.traffic_repeats) and the accuracy delta's bootstrap interval
    "traffic_texts_s", "traffic_batch_ms_p50", "traffic_batch_ms_p99", "traffic_spread_pct", "traffic_texts",
    "traffic_ratio", "accuracy_delta_low", "accuracy_delta_high",
    "notes",
)
ROW_FIELDS += ("escalated",)  # composite cascades: share of inputs sent on to the larger model
# agreement: classifiers, share of identical predictions; causal LMs, top-1 next-token agreement.
# Ratios are always (this model) / (reference model), measured in the same run:
# throughput_ratio > 1 and latency_ratio < 1 mean faster; size_ratio < 1 means smaller.


@dataclass
class BenchResult:
    """Rows (one per model, fixed schema `ROW_FIELDS`), the machine, the config and the data used."""

    rows: list[dict[str, Any]]
    machine: dict[str, Any]
    config: dict[str, Any]
    reference: str
    data: dict[str, Any] | None = None
    created: str = ""
    notes: list[str] = field(default_factory=list)

    def row(self, name: str) -> dict[str, Any]:
        for r in self.rows:
            if r["name"] == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "created": self.created, "reference": self.reference, "data": self.data,
                "config": self.config, "machine": self.machine, "notes": list(self.notes),
                "rows": [{k: r.get(k) for k in ROW_FIELDS} for r in self.rows]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BenchResult":
        if d.get("schema") != SCHEMA:
            raise LeanlmError(f"not a leanlm benchmark result (schema {d.get('schema')!r}, expected {SCHEMA})")
        return cls(rows=d["rows"], machine=d["machine"], config=d["config"], reference=d["reference"],
                   data=d.get("data"), created=d.get("created", ""), notes=d.get("notes", []))

    def to_json(self, path: str | os.PathLike) -> Path:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return Path(path)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "BenchResult":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, KeyError) as e:
            raise LeanlmError(f"cannot read benchmark result {path}: {e}") from None

    def table(self) -> tuple[list[str], list[list[str]]]:
        """Column headers and formatted cells; columns with no values in any row are left out."""
        from leanlm.bench.report import table

        return table(self)

    def markdown(self) -> str:
        head, cells = self.table()
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
        return "\n".join(lines)

    def print(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.table import Table

        head, cells = self.table()
        t = Table(*head, title=f"leanlm benchmark (reference: {self.reference})")
        for row in cells:
            t.add_row(*row)
        if console is None:
            console = Console()
            if not console.is_terminal:  # logs and captured output: don't squeeze the table into 80 columns
                console = Console(width=200)
        console.print(t)
        m = self.machine
        flags = ", ".join(f for f, on in m.get("flags", {}).items() if on)
        console.print(f"{m.get('cpu')} | {m.get('usable_cores')} cores | threads {m.get('threads')} | {flags} | "
                      f"load {m.get('loadavg_1m')}")
        for n in self.notes:
            console.print(f"note: {n}")


# ----------------------------------------------------------------------------- benchmark

def _resolve(value: Any) -> tuple[LeanModel, Path | None]:
    """A LeanModel and, when it was given as a path, the directory it came from."""
    from leanlm.models.loading import load

    if isinstance(value, LeanModel):
        return value, None
    model = load(value)
    p = Path(str(value)).expanduser()
    return model, (p if (p / "leanlm.json").exists() else None)


def _derive_names(models: Sequence[Any]) -> list[str]:
    names = []
    for v in models:
        if isinstance(v, LeanModel):
            techs = "+".join(t.get("type", "?") for t in v.record.techniques) or "float"
            base = v.path.name if v.path else f"{v.record.base_model} {techs}"
            rt = (v.record.extra.get("runtime") or {}).get("name")
            n = f"{base} ({'compiled' if rt == 'torch.compile' else v.backend})" if (rt or v.backend != "torch") else base
        else:
            n = Path(str(v)).name or str(v)
        k, cand = 2, n
        while cand in names:
            cand, k = f"{n} #{k}", k + 1
        names.append(cand)
    return names


def _runtime(model: LeanModel) -> tuple[str, float | None, str | None]:
    """(runtime label, compile seconds, compile mode) of a model."""
    from leanlm.runtime.torch_compile import is_compiled

    if is_compiled(model):
        return f"torch.compile ({model.runner.mode})", model.runner.compile_s, model.runner.mode
    return ("eager" if model.backend == "torch" else model.backend), None, None


def _dataset(data: Any) -> Any:
    if data is None:
        return None
    if isinstance(data, str):
        from leanlm.data import load_splits

        return load_splits(data, seed=0).test
    return getattr(data, "test", data)  # Splits -> its test split


def _lm_quality(reference: LeanModel, model: LeanModel, config: BenchConfig) -> dict[str, Any]:
    """Causal-LM quality versus the reference on WikiText-2 test (leanlm.bench.lm.compare)."""
    from leanlm.bench.lm import compare

    res = compare(model, reference=reference, tokens=config.lm_tokens)
    return {"perplexity": res["perplexity"], "kl_divergence": res["kld"], "agreement": res["top1"]}


def benchmark(
    models: Mapping[str, Any] | Sequence[Any],
    data: Any = None,
    config: BenchConfig = BenchConfig(),
    reference: str | None = None,
    progress: bool = True,
) -> BenchResult:
    """Measure several models side by side in one run: speed, size, memory, accuracy or fidelity.

    Args:
        models: name -> LeanModel | model directory | bundled name, or a list of them (names derived).
            Runtime variants are separate entries built by the caller (e.g. `compile_model(m)`).
        data: dataset name, Splits or TextDataset; its test split gives accuracy for classifiers
            and the sentences for fidelity and timing.
        config: the measurement protocol (BenchConfig).
        reference: name of the baseline row for ratios (default: the first model).
        progress: show a progress bar on stderr.

    Example:
        >>> res = benchmark({"fp32": m, "int8 (compiled)": compile_model(quantize(m, Int8Dynamic()))})
        >>> res.row("int8 (compiled)")["throughput_ratio"]
    """
    from leanlm.bench.evaluate import _label_map, _predict, embedding_fidelity, evaluate_predictions
    from leanlm.bench._child import peak_memory
    from leanlm.models.loading import quiet_transformers

    items = list(models.items()) if isinstance(models, Mapping) else list(zip(_derive_names(list(models)), models))
    if not items:
        raise LeanlmError("benchmark needs at least one model")
    names = [str(n) for n, _ in items]
    if len(set(names)) != len(names):
        raise LeanlmError(f"benchmark model names must be unique: {names}")
    reference = reference if reference is not None else names[0]
    if reference not in names:
        raise LeanlmError(f"reference {reference!r} is not one of the models: {', '.join(names)}")
    test = _dataset(data)
    stack = contextlib.ExitStack()
    threads = stack.enter_context(threads_set(config.threads))
    machine = machine_info()
    tmp = Path(tempfile.mkdtemp(prefix="leanlm-bench-"))
    bar = _Progress(progress)
    try:
        bar.start("loading", len(items))
        loaded, dirs = [], []
        for name, value in items:
            m, d = _resolve(value)
            if d is None:  # size and memory need a directory; save a copy so the caller's model is untouched
                with quiet_transformers():
                    d = LeanModel(m.module, m.tokenizer, copy.deepcopy(m.record), m.runner).save(tmp / f"m{len(dirs)}")
            loaded.append(m)
            dirs.append(d)
            bar.advance()
        rows = []
        for name, m, d in zip(names, loaded, dirs):
            rt, compile_s, _ = _runtime(m)
            wbytes, params = weight_stats(m)
            rows.append({k: None for k in ROW_FIELDS} | {
                "name": name, "base_model": m.record.base_model, "task": m.task, "backend": m.backend,
                "runtime": rt, "techniques": [t.get("type") for t in m.record.techniques],
                "seq_len": config.seq_len, "latency_batch": config.latency_batch,
                "throughput_batch": config.throughput_batch, "threads": threads, "compile_s": compile_s,
                "artifact_bytes": _artifact_bytes(m, d), "weight_bytes": wbytes, "params": params, "notes": []})
            if compile_s is not None and m.runner.threads != threads:
                rows[-1]["notes"].append(f"compiled for {m.runner.threads} threads, run with {threads}")

        texts = bench_texts(test, n=max(64, config.throughput_batch))
        _reset_counters(loaded)
        bar.start("timing", len(loaded) + config.repeats + config.throughput_repeats)
        for row, s in zip(rows, _speed(loaded, config, texts, tick=lambda *_: bar.advance())):
            row.update({k: v for k, v in s.items() if k in ROW_FIELDS})
            if row["compile_s"] == 0.0:  # compiled with warm=False: compiling happened in the first calls
                row["compile_s"] = s["first_call_s"]
        if config.traffic_repeats and test is not None:
            traffic = list(test.texts[: config.traffic_limit])
            bar.start("real traffic", 1 + config.traffic_repeats)
            for row, s in zip(rows, _traffic(loaded, config, traffic, tick=lambda *_: bar.advance())):
                row.update(s)

        ref_i = names.index(reference)
        ref_m = loaded[ref_i]
        if test is not None:  # count cascade escalations on the test split: the realistic input mix
            _reset_counters(loaded)
        bar.start("quality", len(loaded))
        preds: list[list[int] | None] = [None] * len(loaded)
        for i, (row, m) in enumerate(zip(rows, loaded)):
            if m.task == "sequence-classification" and test is not None:
                ds = test.head(config.eval_limit) if config.eval_limit else test
                try:
                    _label_map(m, ds.label_names)
                    preds[i] = _predict(m, ds.texts, config.eval_batch_size, config.seq_len)
                    met = evaluate_predictions(m, ds, preds[i])
                    row.update(accuracy=met["accuracy"], macro_f1=met["macro_f1"], eval_n=met["n"])
                except LeanlmError as e:
                    row["notes"].append(f"accuracy: {e}")
            elif m.task == "feature-extraction" and ref_m.task != "causal-lm":
                fid_texts = bench_texts(test, n=config.fidelity_texts)
                try:
                    fid = embedding_fidelity(ref_m, m, fid_texts, batch_size=config.eval_batch_size,
                                             max_length=config.seq_len)
                    row.update(embedding_mean_cosine=fid["mean_cosine"], embedding_min_cosine=fid["min_cosine"])
                except LeanlmError as e:
                    row["notes"].append(f"fidelity: {e}")
            elif m.task == "causal-lm" and ref_m.task == "causal-lm" and config.lm_tokens:
                try:
                    row.update(_lm_quality(ref_m, m, config))
                except LeanlmError as e:
                    row["notes"].append(f"lm quality: {e}")
            bar.advance()
        _read_counters(rows, loaded)
        for i, row in enumerate(rows):
            if preds[i] is not None and preds[ref_i] is not None and len(preds[i]) == len(preds[ref_i]):
                row["agreement"] = float(np.mean(np.asarray(preds[i]) == np.asarray(preds[ref_i])))
        if config.bootstrap and test is not None:
            _accuracy_intervals(rows, loaded, preds, test.head(config.eval_limit) if config.eval_limit else test,
                                ref_i, config)

        if config.memory:  # one fresh process per model; they run side by side (RSS is per process)
            from concurrent.futures import ThreadPoolExecutor

            bar.start("memory", len(loaded))
            with ThreadPoolExecutor(max_workers=min(len(loaded), usable_cores())) as pool:
                jobs = [pool.submit(peak_memory, d, config, _runtime(m)[2]) for m, d in zip(loaded, dirs)]
                for row, job in zip(rows, jobs):
                    mem = job.result()
                    if "error" in mem:
                        row["notes"].append(mem["error"])
                    else:
                        row.update(peak_rss_mb=mem["peak_rss_mb"], model_rss_mb=mem["model_rss_mb"])
                    bar.advance()
        _ratios(rows, ref_i)
        _traffic_ratios(rows, ref_i)
    finally:
        bar.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        stack.close()
    machine["loadavg_1m_end"] = machine_info()["loadavg_1m"]
    notes = []
    busy = max(machine.get("loadavg_1m") or 0, machine["loadavg_1m_end"] or 0)
    if busy > usable_cores() + 0.5:
        notes.append(f"machine busy (load average {busy:.1f} on {usable_cores()} cores): absolute timings are noisy; "
                     "same-run ratios are more robust")
    data_info = None
    if test is not None:
        data_info = {"name": getattr(test, "name", str(data)), "n": len(test),
                     "evaluated": min(len(test), config.eval_limit or len(test))}
    return BenchResult(rows=rows, machine=machine, config=config.to_dict() | {"threads": threads},
                       reference=reference, data=data_info, notes=notes,
                       created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


# ----------------------------------------------------------------------------- composite models
# Ensembles and cascades (leanlm.runtime.composite) hold no weights themselves: their runner knows
# the members; a cascade's runner also counts the inputs it escalates.

def _composite_weight_stats(model: LeanModel) -> tuple[int | None, int | None]:
    stats = [weight_stats(m) for m in getattr(model.runner, "members", None) or ()]
    if not stats or any(b is None for b, _ in stats):
        return None, None
    return sum(b for b, _ in stats), sum(p for _, p in stats)


def _artifact_bytes(model: LeanModel, directory: Path) -> int:
    members = getattr(model.runner, "artifact_bytes", None)
    return members() if callable(members) else directory_size(directory)


def _reset_counters(models: Sequence[LeanModel]) -> None:
    for m in models:
        if callable(getattr(m.runner, "reset_stats", None)):
            m.runner.reset_stats()


def _read_counters(rows: list[dict], models: Sequence[LeanModel]) -> None:
    for row, m in zip(rows, models):
        if callable(getattr(m.runner, "stats", None)):
            row["escalated"] = m.runner.stats().get("escalated_share")


def _ratios(rows: list[dict], ref_i: int) -> None:
    ref = rows[ref_i]

    def ratio(a: Any, b: Any) -> float | None:
        return float(a) / float(b) if a is not None and b and math.isfinite(b) else None

    for r in rows:
        r["throughput_ratio"] = ratio(r["throughput_seq_s"], ref["throughput_seq_s"])
        r["latency_ratio"] = ratio(r["latency_ms_p50"], ref["latency_ms_p50"])
        r["size_ratio"] = ratio(r["artifact_bytes"], ref["artifact_bytes"])
        if r["accuracy"] is not None and ref["accuracy"] is not None:
            r["accuracy_delta_pts"] = 100.0 * (r["accuracy"] - ref["accuracy"])


def _traffic_ratios(rows: list[dict], ref_i: int) -> None:
    ref = rows[ref_i].get("traffic_texts_s")
    for r in rows:
        r["traffic_ratio"] = r["traffic_texts_s"] / ref if r.get("traffic_texts_s") is not None and ref else None


def _correct(model: LeanModel, ds: Any, preds: Sequence[int]) -> np.ndarray:
    """1.0 where a prediction (mapped to the dataset's label ids) is right, else 0.0."""
    from leanlm.bench.evaluate import _label_map

    mapping = _label_map(model, ds.label_names)
    mapped = [mapping[p] for p in preds] if mapping is not None else list(preds)
    return (np.asarray(mapped) == np.asarray(ds.labels)).astype(np.float64)


def _accuracy_intervals(rows: list[dict], models: Sequence[LeanModel], preds: Sequence[list[int] | None], ds: Any,
                        ref_i: int, config: BenchConfig) -> None:
    """Paired-bootstrap interval of every accuracy delta versus the reference (same examples, same seed)."""
    from leanlm.bench.stats import paired_bootstrap

    if preds[ref_i] is None:
        return
    ref = _correct(models[ref_i], ds, preds[ref_i])
    for row, m, p in zip(rows, models, preds):
        if p is not None and len(p) == len(ref):
            ci = paired_bootstrap(ref, _correct(m, ds, p), config.bootstrap, seed=config.bootstrap_seed)
            row.update(accuracy_delta_low=ci.low, accuracy_delta_high=ci.high)


class _Progress:
    """A rich progress bar on stderr (or nothing)."""

    def __init__(self, enabled: bool):
        self.p = None
        self.task = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.p = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                              TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            self.p.start()

    def start(self, what: str, total: int) -> None:
        if self.p is not None:
            if self.task is not None:
                self.p.remove_task(self.task)
            self.task = self.p.add_task(f"bench: {what}", total=total)

    def advance(self) -> None:
        if self.p is not None and self.task is not None:
            self.p.advance(self.task)

    def stop(self) -> None:
        if self.p is not None:
            self.p.stop()


def record_metrics(model: LeanModel, row: dict[str, Any], machine: dict[str, Any] | None = None) -> LeanModel:
    """Put a benchmark row (and the machine it ran on) into `model.record.metrics` for saving.

    Example:
        >>> record_metrics(m, res.row("int8"), res.machine); m.save("runs/int8-measured")
    """
    metrics = model.record.metrics
    for key in ("accuracy", "macro_f1"):
        if row.get(key) is not None:
            metrics[key] = row[key]
    speed = {k: row.get(k) for k in ROW_FIELDS if k not in ("name", "base_model", "task", "techniques", "notes")}
    metrics["bench"] = {"name": row.get("name"), **{k: v for k, v in speed.items() if v is not None},
                        "machine": machine or machine_info(),
                        "measured": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    return model
