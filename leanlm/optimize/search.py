"""`leanlm optimize`: an Optuna search for the accuracy x speed (or size) frontier, crash-safe.

The study is multi-objective (validation accuracy delta in points; speed-up over the baseline
measured in the same run, or size), sampled by Optuna's TPE after cheap-first seed candidates
(`SearchSpace.seeds`). Its journal (`optuna.storages.JournalStorage` on a JournalFileBackend file)
lives in `OUT/search-<key>/`, where the key hashes the model (its leanlm.json, which checksums
the weights), the data (every split's texts and labels), the evaluator's source and every search
option that changes a trial's result; budget, trial cap, Ray and peers do not. Re-running the
same command continues the study: finished trials are read back, never redone; a trial killed
mid-way is retried, reusing its finished recipe steps from disk. A changed dataset, model or
evaluator gives a new key, so a fresh study.

Accuracy: candidates are selected on the validation split; the test split is scored once, for the
frontier only (`leanlm.optimize.frontier`). Speed: every candidate passes the same-run speed gate
(`leanlm.optimize.gate`) or is rejected with its numbers.

Example:
    >>> res = optimize("runs/sentiment", "runs/opt", OptimizeConfig(data="movie-snippets", budget_minutes=30))
    >>> res.recommended       # a model directory: leanlm serve runs/opt/recommended
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from leanlm.config import BaseConfig, check
from leanlm.errors import ConfigError, UnsupportedError

BACKEND_CHOICES = ("auto", "torch", "onnxruntime", "openvino")
JOURNAL = "journal.log"
EVENTS = "events.jsonl"
PEER_RESERVE_S = 60.0
# options that change no trial's result: left out of the study key, so a re-run may change them
_NOT_KEYED = ("budget_minutes", "trials", "ray", "parallel", "peers", "final_models", "progress")


def _ints(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class OptimizeConfig(BaseConfig):
    """A search for the fastest (or smallest) model within an accuracy budget.

    Args:
        data: the task's dataset (name or file): train (calibration, distillation), validation
            (selection), test (the frontier, once).
        max_accuracy_drop: validation accuracy points a candidate may lose against the input model.
        target: "throughput" (batch x seq), "latency" (batch 1 x seq) or "size" (artifact bytes).
        shape: the throughput shape "BATCHxSEQ"; latency uses batch 1 at the same SEQ.
        backend: "auto" (every runtime), or only "torch", "onnxruntime" or "openvino".
        budget_minutes: wall-clock budget of the whole run (search and final measurement).
        ray: None (in-process), "local" or a Ray address: builds run as Ray tasks.
        methods: search methods (move names, e.g. "int8-dynamic", "heads"); empty = all registered.
        threads: thread counts to search (empty = all usable cores).
        trials: stop after this many trials (0 = when the budget ends).
        min_speedup: candidates must also be this many times faster than the baseline.
        recover_points: accuracy a later distillation step may win back (early abandonment slack).
        calibration_size: training texts each recipe step gets.
        eval_limit: validation texts used (None = all); test_limit: test texts (None = all).
        warmup, repeats, throughput_repeats: the timing protocol of the gate (per candidate).
        noise_repeats: baseline-versus-itself runs measuring the noise.
        final_repeats: throughput repeats of the final same-run timing of the frontier.
        traffic_repeats: passes over the real test texts in the final run (0 = skip).
        peers: peer conversions in the final run: "ov", "nncf", "ort" (empty = none).
        final_models: at most this many frontier models in the final run.
        bootstrap: resamples of the accuracy intervals.
        parallel: candidates built at once under Ray.
        distill_epochs: the most epochs a distillation candidate trains.
        unlabeled: datasets (names or files) whose texts distillation may add, labelled by the teacher
            (e.g. ("imdb", "amazon", "tweets") for sentiment); empty: the task's own texts only.
        unlabeled_size: texts taken from each unlabeled dataset.
        seed: Optuna's sampler seed; split_seed: the data split seed.

    Example:
        >>> OptimizeConfig(data="movie-snippets", max_accuracy_drop=1.0, target="throughput", budget_minutes=60)
    """

    data: str = "movie-snippets"
    max_accuracy_drop: float = 1.0
    target: str = "throughput"
    shape: str = "32x128"
    backend: str = "auto"
    budget_minutes: float = 60.0
    ray: Optional[str] = None
    methods: tuple[str, ...] = ()
    threads: tuple[int, ...] = ()
    trials: int = 0
    min_speedup: float = 1.0
    recover_points: float = 2.0
    calibration_size: int = 256
    eval_limit: Optional[int] = None
    test_limit: Optional[int] = None
    warmup: int = 2
    repeats: int = 5
    throughput_repeats: int = 3
    noise_repeats: int = 3
    final_repeats: int = 5
    traffic_repeats: int = 1
    peers: tuple[str, ...] = ("ov", "nncf", "ort")
    final_models: int = 4
    bootstrap: int = 1000
    parallel: int = 2
    distill_epochs: int = 2
    unlabeled: tuple[str, ...] = ()
    unlabeled_size: int = 20000
    seed: int = 0
    split_seed: int = 0

    def validate(self) -> None:
        from leanlm.optimize.gate import TARGETS

        check(isinstance(self.max_accuracy_drop, (int, float)) and self.max_accuracy_drop >= 0,
              f"optimize: max_accuracy_drop must be >= 0 points, got {self.max_accuracy_drop!r}")
        check(self.target in TARGETS, f"optimize: target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        self.batch_seq()
        check(self.backend in BACKEND_CHOICES, f"optimize: backend must be one of {', '.join(BACKEND_CHOICES)}, got {self.backend!r}")
        check(isinstance(self.budget_minutes, (int, float)) and self.budget_minutes > 0,
              f"optimize: budget_minutes must be > 0, got {self.budget_minutes!r}")
        check(all(_ints(t) and t >= 1 for t in self.threads), f"optimize: threads must be integers >= 1, got {self.threads!r}")
        check(isinstance(self.min_speedup, (int, float)) and self.min_speedup >= 1.0,
              f"optimize: min_speedup must be >= 1, got {self.min_speedup!r}")
        for name, low in (("trials", 0), ("calibration_size", 1), ("warmup", 0), ("repeats", 1), ("throughput_repeats", 1),
                          ("noise_repeats", 2), ("final_repeats", 1), ("traffic_repeats", 0), ("final_models", 1),
                          ("bootstrap", 1), ("parallel", 1), ("distill_epochs", 1), ("unlabeled_size", 1), ("seed", 0), ("split_seed", 0)):
            v = getattr(self, name)
            check(_ints(v) and v >= low, f"optimize: {name} must be an integer >= {low}, got {v!r}")
        for name in ("eval_limit", "test_limit"):
            v = getattr(self, name)
            check(v is None or (_ints(v) and v >= 1), f"optimize: {name} must be None or an integer >= 1, got {v!r}")
        check(all(p in ("ov", "nncf", "ort") for p in self.peers), f"optimize: peers are ov, nncf, ort; got {self.peers!r}")

    def batch_seq(self) -> tuple[int, int]:
        try:
            b, s = (int(x) for x in str(self.shape).lower().split("x"))
        except ValueError:
            raise ConfigError(f"optimize: shape is BATCHxSEQ, e.g. 32x128; got {self.shape!r}") from None
        check(b >= 1 and s >= 1, f"optimize: shape dimensions must be >= 1, got {self.shape!r}")
        return b, s

    def backends(self) -> tuple[str, ...]:
        return ("torch", "onnxruntime", "openvino") if self.backend == "auto" else (self.backend,)


# ----------------------------------------------------------------------------- the study key

def _sha(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()


def data_hash(splits: Any) -> str:
    return _sha(*[[list(s.texts), list(s.labels), list(s.label_names)]
                  for s in (splits.train, splits.validation, splits.test)])


def evaluator_hash() -> str:
    """The source of what scores and times a trial: a change there invalidates finished trials."""
    import leanlm.bench.evaluate as ev
    import leanlm.optimize.gate as gate
    import leanlm.optimize.trial as trial

    return _sha(*[inspect.getsource(m).encode() for m in (ev, gate, trial)])


def study_key(model_dir: Path, splits: Any, config: OptimizeConfig) -> str:
    keyed = {k: v for k, v in config.to_dict().items() if k not in _NOT_KEYED}
    return _sha((model_dir / "leanlm.json").read_bytes(), data_hash(splits), evaluator_hash(), keyed)[:16]


# ----------------------------------------------------------------------------- results

@dataclass
class OptimizeResult:
    """What a search produced: every trial, the frontier, the final same-run measurement, the pick."""

    key: str
    trials: list[dict[str, Any]]
    frontier: list[int] = field(default_factory=list)
    final: Any = None  # leanlm.bench.measure.BenchResult of the final interleaved run
    recommended: Path | None = None
    recommended_trial: int | None = None
    message: str = ""
    verdict: str = ""
    report: dict[str, Path] = field(default_factory=dict)
    noise: float | None = None
    impossible: bool = False


def _log(progress: bool) -> Callable[[str], None]:
    import sys

    return (lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda m: None)


class _Bar:
    """A rich progress bar over the budget, showing the current best and the time left."""

    def __init__(self, enabled: bool, budget_s: float):
        self.p = self.task = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn

            self.p = Progress(TextColumn("{task.description}"), BarColumn(), console=Console(stderr=True), transient=True)
            self.p.start()
            self.task = self.p.add_task("optimize", total=budget_s)

    def update(self, elapsed: float, text: str) -> None:
        if self.p is not None:
            self.p.update(self.task, completed=elapsed, description=text)

    def stop(self) -> None:
        if self.p is not None:
            self.p.stop()


def _require_optuna() -> Any:
    try:
        import optuna
    except ModuleNotFoundError:
        raise UnsupportedError("leanlm optimize needs Optuna: pip install 'leanlm[optimize]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def open_study(work: Path, key: str, config: OptimizeConfig) -> Any:
    """The study in `work`'s journal (created, or loaded to continue)."""
    optuna = _require_optuna()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    work.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(work / JOURNAL)))
    second = "minimize" if config.target == "size" else "maximize"
    sampler = optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=4)
    return optuna.create_study(study_name=key, storage=storage, directions=["maximize", second],
                               sampler=sampler, load_if_exists=True)


def _retry_interrupted(study: Any) -> int:
    """Trials left RUNNING by a killed run: mark them failed and enqueue their parameters again."""
    from optuna.trial import TrialState

    stale = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    for t in stale:  # Optuna has no public call that fails another process's trial; its storage does it
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
    return len(stale)


def finished(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            and "status" in t.user_attrs]


def trial_rows(study: Any) -> list[dict[str, Any]]:
    rows = []
    for t in finished(study):
        rows.append({"number": t.number, **t.user_attrs})
    return rows


# ----------------------------------------------------------------------------- the search

def _estimate(model: Any, n_val: int, config: OptimizeConfig, load_s: float) -> dict[str, float]:
    """Seconds of the setup and of one trial, from one timed forward pass at the search shape."""
    import torch

    from leanlm.bench.timing import bench_texts, fixed_batch

    b, s = config.batch_seq()
    batch = fixed_batch(model, bench_texts(None), b, s)
    with torch.inference_mode():
        model(**batch)
        t0 = time.perf_counter()
        model(**batch)
        call = time.perf_counter() - t0
    evaluation = call * math.ceil(n_val / 32) * 32 / b
    timing = 2 * call * (config.warmup + 1 + config.throughput_repeats) + 2 * call * config.repeats / b
    return {"setup": evaluation + config.noise_repeats * timing, "trial": load_s * 2 + evaluation + timing + call * 4}


def _executor(config: OptimizeConfig) -> Any:
    if config.ray:
        from leanlm.optimize.ray import RayExecutor

        return RayExecutor(config.ray)
    from leanlm.optimize.trial import build_candidate

    class InProcess:
        parallel = 1

        def map(self, jobs: list[dict]) -> list[dict]:
            return [build_candidate(j) for j in jobs]

    return InProcess()


def _values(attrs: dict[str, Any], target: str) -> tuple[float, float]:
    second = attrs.get("size_ratio") if target == "size" else attrs.get("speedup")
    return float(attrs.get("delta_pts", -100.0)), float(second if second is not None else (1e9 if target == "size" else 0.0))


def optimize(model_dir: str | os.PathLike, out_dir: str | os.PathLike, config: OptimizeConfig | None = None,
             timer: Callable | None = None, progress: bool = True, **options: Any) -> OptimizeResult:
    """Search compressions, runtimes and thread counts for the fastest model within an accuracy budget.

    Args:
        model_dir: the fine-tuned float classifier (a leanlm model directory, PyTorch).
        out_dir: the search (journal, builds), report.html, optimize.json and `recommended/`.
        config: an OptimizeConfig (or give its fields as keyword arguments).
        timer: fn(models, threads) -> speed dicts; None times with the benchmark protocol
            (tests inject one: no speed claim is made from a test machine).
        progress: a progress bar and one line per trial on stderr.

    Returns an OptimizeResult; `recommended` is None (and `impossible` True) when no candidate met
    both the accuracy budget and the speed gate: `message` then names the closest candidates.

    Example:
        >>> leanlm.optimize("runs/sentiment", "runs/opt", data="movie-snippets", budget_minutes=30)
    """
    from leanlm.artifact import read_record
    from leanlm.bench.measure import BenchConfig
    from leanlm.bench.timing import bench_texts, usable_cores
    from leanlm.data import load_splits
    from leanlm.models.loading import load
    from leanlm.optimize.gate import SpeedGate, default_timer
    from leanlm.optimize.space import Candidate, SearchSpace, SpaceContext
    from leanlm.optimize.trial import correct_vector

    config = OptimizeConfig.from_dict((config or OptimizeConfig()).to_dict() | options) if options else (config or OptimizeConfig())
    started = time.monotonic()
    budget_s = 60.0 * config.budget_minutes
    model_dir, out = Path(model_dir), Path(out_dir)
    read_record(model_dir, verify=False)
    t0 = time.perf_counter()
    base = load(model_dir)
    load_s = time.perf_counter() - t0
    if base.task != "sequence-classification" or base.backend != "torch":
        raise UnsupportedError(f"optimize needs a float PyTorch classifier; {model_dir} is a {base.backend} {base.task} model")
    splits = load_splits(config.data, seed=config.split_seed)
    from leanlm.compress._students import source_texts

    for source in config.unlabeled:  # a misspelt source would otherwise fail every unlabeled trial, one by one
        source_texts(source, config.split_seed)
    val = splits.validation.head(config.eval_limit) if config.eval_limit else splits.validation
    b, s = config.batch_seq()
    threads = config.threads or (usable_cores(),)
    est = _estimate(base, len(val), config, load_s)
    if budget_s < est["setup"] + est["trial"]:
        raise ConfigError(f"optimize: a {config.budget_minutes:g}-minute budget cannot hold one trial: about "
                          f"{est['setup'] + est['trial']:.0f} s needed (baseline evaluation and noise ~{est['setup']:.0f} s, "
                          f"one trial ~{est['trial']:.0f} s); raise --budget-minutes")
    say = _log(progress)
    key = study_key(model_dir, splits, config)
    work = out / f"search-{key}"
    study = open_study(work, key, config)
    say(f"optimize: study {key} in {work} ({len(finished(study))} finished trials)")

    layers = getattr(base.module.config, "num_hidden_layers", 1)
    space = SearchSpace(SpaceContext(backends=config.backends(), layers=layers, max_drop=config.max_accuracy_drop,
                                     distill_epochs=config.distill_epochs, unlabeled=tuple(config.unlabeled),
                                     unlabeled_size=config.unlabeled_size), config.methods, threads)
    if not study.get_trials(deepcopy=False):
        study.set_user_attr("config", config.to_dict())
        for params in space.seeds():
            study.enqueue_trial(params, skip_if_exists=True)
    retried = _retry_interrupted(study)
    if retried:
        say(f"optimize: {retried} interrupted trial(s) will run again (their finished steps are reused)")

    ref = correct_vector(base, val.texts, val.labels, val.label_names, s)
    bench = BenchConfig(seq_len=s, throughput_batch=b, warmup=config.warmup, repeats=config.repeats,
                        throughput_repeats=config.throughput_repeats, memory=False)
    timer = timer or default_timer(bench, bench_texts(splits.test, n=max(64, b)))
    gate = SpeedGate(base, timer, config.target, config.noise_repeats, config.min_speedup, max(threads))
    noise = gate.calibrate()
    say(f"optimize: baseline validation accuracy {100 * ref.mean():.2f} % ({len(val)} texts); "
        f"run-to-run noise {100 * noise:.1f} %")
    base_size = _dir_size(model_dir)
    job_base = {"model_dir": str(model_dir), "builds": str(work / "builds"), "data": config.data,
                "calibration_size": config.calibration_size, "val_texts": list(val.texts),
                "val_labels": list(val.labels), "label_names": list(val.label_names),
                "baseline_correct": ref.tolist(), "max_drop": config.max_accuracy_drop,
                "recover_points": config.recover_points, "bootstrap": config.bootstrap, "seq_len": s,
                "shapes": [[1, s], [b, s]]}
    executor = _executor(config)
    bar = _Bar(progress, budget_s)
    # kept for the end: the final run times the frontier and the peers, after converting the peers
    # (MiniLM's took 10-60 s each here; the NNCF one is the slowest)
    final_s = est["trial"] * (1 + config.final_models) + PEER_RESERVE_S * len(config.peers)
    per_trial, stalls = est["trial"], 0
    try:
        while True:
            done = finished(study)
            if config.trials and len(done) >= config.trials:
                break
            left = budget_s - (time.monotonic() - started)
            if left < per_trial + final_s:
                say(f"optimize: budget reached ({left:.0f} s left, a trial takes ~{per_trial:.0f} s)")
                break
            keys = {t.user_attrs.get("key"): t for t in done}
            n = max(1, min(getattr(executor, "parallel", 1), config.parallel if config.ray else 1))
            if config.trials:
                n = min(n, config.trials - len(done))
            asked = [study.ask() for _ in range(n)]
            cands = [space.suggest(t) for t in asked]
            jobs, fresh = [], []
            for t, c in zip(asked, cands):
                if c.key() in keys:  # Optuna proposed a finished candidate again: its numbers, not a rebuild
                    old = keys[c.key()]
                    for k, v in old.user_attrs.items():
                        t.set_user_attr(k, v)
                    t.set_user_attr("duplicate_of", old.number)
                    study.tell(t, old.values if old.values else None,
                               state=None if old.values else old.state)
                    continue
                jobs.append(job_base | {"candidate": c.to_dict(), "key": c.key()})
                fresh.append((t, c))
            stalls = stalls + 1 if not jobs else 0
            if stalls > 25:
                say("optimize: the search space is exhausted (Optuna keeps proposing finished candidates)")
                break
            if not jobs:
                continue
            t_batch = time.perf_counter()
            results = executor.map(jobs)  # builds may run in parallel; timing below runs alone, one at a time
            for (t, c), res in zip(fresh, results):
                _finish(study, t, c, res, gate, config, base_size, work, say)
            per_trial = max(est["trial"], (time.perf_counter() - t_batch) / len(jobs))
            bar.update(time.monotonic() - started, _best_line(study, config, budget_s - (time.monotonic() - started)))
    finally:
        bar.stop()
    from leanlm.optimize.frontier import conclude

    return conclude(study, key, base, model_dir, out, splits, config, noise, started, say)


def _dir_size(d: Path) -> int:
    from leanlm.artifact import directory_size

    return directory_size(d)


def _finish(study: Any, t: Any, c: Any, res: dict, gate: Any, config: OptimizeConfig, base_size: int,
            work: Path, say: Callable[[str], None]) -> None:
    """Gate a built candidate, tell Optuna, journal the event."""
    from optuna.trial import TrialState

    from leanlm.models.loading import load

    attrs = {"key": c.key(), "candidate": c.to_dict(), "label": c.label(), "reason": res.get("reason", ""),
             "steps": res.get("steps", []), "build_s": res.get("seconds"), "noise": gate.noise}
    for k in ("accuracy", "delta_pts", "delta_low", "delta_high", "within_noise", "dir", "size_bytes"):
        if k in res:
            attrs[k] = res[k]
    if res.get("size_bytes"):
        attrs["size_ratio"] = res["size_bytes"] / base_size
    status = res["status"]
    if status == "built":
        verdict = gate.judge(load(res["dir"]), c.threads)
        attrs.update(speedup=verdict.ratio, speed=verdict.row, baseline_speed=verdict.baseline_row)
        reasons = []
        if not res["meets_budget"]:
            reasons.append(f"validation {res['delta_pts']:+.2f} pts misses the -{config.max_accuracy_drop:g} pts budget")
        if not verdict.passed:
            reasons.append(verdict.reason)
        if config.target == "size" and attrs.get("size_ratio", 1.0) >= 1.0:
            reasons.append(f"not smaller than the baseline (size x{attrs.get('size_ratio', 1.0):.2f})")
        status = "rejected" if reasons else "accepted"
        attrs["reason"] = "; ".join(reasons)
        attrs["fast"], attrs["accurate"] = verdict.passed, bool(res["meets_budget"])
    attrs["status"] = status
    for k, v in attrs.items():
        t.set_user_attr(k, v)
    if status in ("accepted", "rejected"):
        study.tell(t, list(_values(attrs, config.target)))
    else:
        study.tell(t, state=TrialState.PRUNED)
    with open(work / EVENTS, "a") as f:
        f.write(json.dumps({"trial": t.number, "key": c.key(), "status": status, "pid": os.getpid(),
                            "time": time.time()}) + "\n")
    ratio = f" x{attrs['speedup']:.2f}" if "speedup" in attrs else ""
    delta = f" {attrs['delta_pts']:+.2f} pts" if "delta_pts" in attrs else ""
    say(f"trial {t.number}: {c.label()}:{delta}{ratio} {status}" + (f" ({attrs['reason']})" if attrs["reason"] else ""))


def _best_line(study: Any, config: OptimizeConfig, left: float) -> str:
    ok = [t for t in finished(study) if t.user_attrs.get("status") == "accepted"]
    best = max(ok, key=lambda t: t.user_attrs.get("speedup", 0.0), default=None)
    what = (f"best x{best.user_attrs['speedup']:.2f} at {best.user_attrs['delta_pts']:+.2f} pts (trial {best.number})"
            if best else "no accepted candidate yet")
    return f"optimize: {len(finished(study))} trials | {what} | {max(0.0, left) / 60:.1f} min left"
