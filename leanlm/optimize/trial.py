"""Build and validate one candidate: recipe steps one by one, abandoning a hopeless prefix early.

Every prefix of a candidate's recipe is its own recipe output, `builds/<hash of the prefix>/`,
made by `leanlm.compress.recipe.run_recipe`; the step directories of the previous prefix are
linked in, so run_recipe reuses them (same step, same input) and two candidates with a common
prefix share its build. After each step but the last, the prefix's validation accuracy is checked:
one that already misses the budget by more than the later steps can recover (distillation
recovers up to `recover_points`; quantization recovers nothing) is abandoned with its numbers.
A cut followed by distillation on unlabeled texts is a student being trained, not a cut being
repaired: its accuracy before that training says little, so it is never abandoned there.

`build_candidate(job)` takes and returns plain dicts, so it runs the same in-process and as a Ray
task (`leanlm.optimize.ray`).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from leanlm.errors import LeanlmError

RECOVERS = ("distill",)  # families that win accuracy back after a cut


def prefix_dir(builds: Path, data: str | None, calibration_size: int, steps: Sequence[dict]) -> Path:
    blob = json.dumps({"data": data, "calibration_size": calibration_size, "steps": list(steps)}, sort_keys=True)
    return builds / ("r-" + hashlib.sha256(blob.encode()).hexdigest()[:16])


def _link_prefix(target: Path, previous: Path | None) -> None:
    """Link the previous prefix's step directories into `target`, so run_recipe reuses them."""
    from leanlm.compress.recipe import RECIPE_FILE

    target.mkdir(parents=True, exist_ok=True)
    if not (target / RECIPE_FILE).exists():
        (target / RECIPE_FILE).write_text("{}\n")  # run_recipe only writes into its own outputs
    if previous is None:
        return
    for step in sorted(previous.glob("[0-9][0-9]-*")):
        link = target / step.name
        if not link.exists() and not link.is_symlink():
            os.symlink(os.path.relpath(step.resolve(), target), link)


def correct_vector(model: Any, texts: Sequence[str], labels: Sequence[int], label_names: Sequence[str],
                   seq_len: int) -> np.ndarray:
    """1.0 per validation text the model gets right (labels mapped by name), else 0.0."""
    from leanlm.bench.evaluate import _label_map, _predict

    preds = _predict(model, list(texts), 32, seq_len)
    mapping = _label_map(model, list(label_names))
    mapped = [mapping[p] for p in preds] if mapping is not None else preds
    return (np.asarray(mapped) == np.asarray(labels)).astype(np.float64)


def judge_accuracy(ref: np.ndarray, got: np.ndarray, max_drop: float, resamples: int, seed: int = 0) -> dict[str, Any]:
    """Delta in points versus the baseline on the same texts, its paired-bootstrap interval, the verdict."""
    from leanlm.bench.stats import paired_bootstrap

    ci = paired_bootstrap(ref, got, max(1, resamples), seed=seed)
    return {"accuracy": float(got.mean()), "delta_pts": ci.estimate, "delta_low": ci.low, "delta_high": ci.high,
            "within_noise": bool(ci.low <= 0.0 <= ci.high), "meets_budget": ci.estimate >= -max_drop}


def _realize(model: Any, backend: str, static: bool, shapes: Sequence[Sequence[int]]) -> Any:
    """The built model on the candidate's runtime (float PyTorch converts; quantized ones already run there)."""
    from leanlm.compress.quantize import is_quantized
    from leanlm.errors import UnsupportedError

    if model.backend != backend:
        if model.backend != "torch" or is_quantized(model):
            raise UnsupportedError(f"a {model.backend} model cannot run on {backend}")
        from leanlm.runtime.convert import convert

        model = convert(model, backend, precision="bf16" if backend == "openvino" else "fp32")
    if static and model.backend == "openvino":
        from leanlm.runtime.openvino import with_shapes

        model = with_shapes(model, shapes)
    return model


def build_candidate(job: dict[str, Any]) -> dict[str, Any]:
    """Build one candidate and score it on the validation split.

    Args (keys of `job`):
        model_dir, builds: the input model directory and the shared build root.
        candidate: `Candidate.to_dict()`; key: its hash.
        data, calibration_size: the recipe's data and calibration size.
        val_texts, val_labels, label_names, baseline_correct: the validation split and the baseline's 0/1 scores.
        max_drop, recover_points, bootstrap, seq_len, shapes: budget and protocol.

    Returns a dict: status ("built", "abandoned" or "failed"), reason, dir, accuracy figures, steps, seconds.
    """
    from leanlm.bench.timing import set_threads
    from leanlm.compress.recipe import FINAL, run_recipe
    from leanlm.models.loading import load, quiet_transformers
    from leanlm.optimize.space import Candidate

    t0 = time.perf_counter()
    set_threads(job["candidate"]["threads"])
    cand = Candidate.from_dict(job["candidate"])
    builds = Path(job["builds"])
    ref = np.asarray(job["baseline_correct"], dtype=np.float64)
    raw_steps = [{f: o} for f, o in cand.steps]
    out: dict[str, Any] = {"key": job["key"], "steps": [], "status": "built", "reason": ""}

    def score(model: Any) -> dict[str, Any]:
        got = correct_vector(model, job["val_texts"], job["val_labels"], job["label_names"], job["seq_len"])
        return judge_accuracy(ref, got, job["max_drop"], job["bootstrap"])

    try:
        with quiet_transformers():
            source, previous = Path(job["model_dir"]), None
            for i in range(1, len(raw_steps) + 1):
                target = prefix_dir(builds, job["data"], job["calibration_size"], raw_steps[:i])
                _link_prefix(target, previous)
                run_recipe(job["model_dir"], target, cand.recipe(job["data"], job["calibration_size"]) | {
                    "steps": raw_steps[:i]}, progress=False)
                previous, source = target, (target / FINAL).resolve()
                if i == len(raw_steps):
                    break
                acc = score(load(source))
                later = [next(iter(s)) for s in raw_steps[i:]]
                recovery = [o for s in raw_steps[i:] for f, o in s.items() if f in RECOVERS]
                slack = 0.0 if not recovery else (
                    float("inf") if any(o.get("unlabeled") for o in recovery) else job["recover_points"])
                out["steps"].append({"step": i, "dir": str(source), **acc})
                if acc["delta_pts"] < -(job["max_drop"] + slack):
                    out.update(status="abandoned", reason=(
                        f"abandoned after step {i} ({next(iter(raw_steps[i - 1].values()))['type']}): validation "
                        f"{acc['delta_pts']:+.2f} pts misses the -{job['max_drop']:g} budget"
                        + (f" by more than the {slack:g} pts later steps may recover" if slack else "")
                        + f"; skipped {', '.join(later)}"), seconds=time.perf_counter() - t0)
                    return out
            model = _realize(load(source), cand.backend, cand.static, job["shapes"])
            final = source
            if cand.backend != _backend_of(source) or cand.static:  # converted: the candidate's own directory
                final = builds / ("c-" + job["key"])
                if not (final / "leanlm.json").exists():
                    model.save(final, overwrite=True)
            out.update(score(load(final)), dir=str(final))
    except LeanlmError as e:
        out.update(status="failed", reason=str(e).splitlines()[0] if str(e) else type(e).__name__)
    except Exception as e:  # a technique that crashes on this model: the search goes on, the report says why
        out.update(status="failed", reason=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300])
    from leanlm.artifact import directory_size

    if out.get("dir"):
        out["size_bytes"] = directory_size(Path(out["dir"]))
    out["seconds"] = time.perf_counter() - t0
    return out


def _backend_of(directory: Path) -> str:
    from leanlm.artifact import read_record

    return read_record(directory, verify=False).backend
