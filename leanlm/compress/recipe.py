"""Composed recipes: several compression steps, each written as its own model directory.

A recipe is a YAML or JSON file:

    data: movie-snippets          # task data: calibration texts, labels, distillation, validation
    calibration_size: 256
    steps:
      - prune: {type: heads, ratio: 0.4}
      - distill: {type: distill, loop: {epochs: 2, lr: 1e-4}}
      - quantize: {type: int8-nncf}

Each step is `{family: {type: name, ...options}}` and becomes the registered config
(`leanlm.config.lookup(family, type)`), so every option is validated by the technique itself and
techniques added later need no change here. The whole recipe is checked before anything runs.

`run_recipe` writes `OUT/01-<type>/`, `OUT/02-<type>/`, ... (each a complete model directory,
written atomically, with the recipe, step index, input directory and the input's leanlm.json
checksum in `record.extra["recipe"]`), `OUT/recipe.json` (the normalised recipe and per-step
status, parameters, size, seconds) and `OUT/final`, a relative symlink to the last step's
directory, so `leanlm.load(OUT / "final")` loads the result. A re-run reuses a step whose
directory holds the same step (config, data, calibration size) made from the same input, and
redoes it (and so every later step, whose input then changed) otherwise.

Example:
    >>> final = run_recipe("runs/sentiment", "runs/sentiment-small", "examples/recipes/prune-distill-int8.yaml")
    >>> leanlm.load("runs/sentiment-small/final")
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from leanlm.artifact import RECORD_FILE, LeanModel, atomic_write_text, directory_size, read_record
from leanlm.config import BaseConfig, lookup
from leanlm.errors import ArtifactError, ConfigError, LeanlmError, did_you_mean

RECIPE_FILE = "recipe.json"
FINAL = "final"
DEFAULT_CALIBRATION_SIZE = 256
_KEYS = ("data", "calibration_size", "steps")

# family -> "module:function" running one step as
#   fn(model, config, *, teacher, splits, calibration, labels) -> LeanModel
# Imported only when a recipe uses the family. A family not listed here is used when its module
# `leanlm.compress.<family>` exposes `recipe_step`.
RUNNERS = {
    "quantize": "leanlm.compress.recipe:quantize_step",
    "prune": "leanlm.compress.recipe:prune_step",
    "lowrank": "leanlm.compress.lowrank:recipe_step",
    "distill": "leanlm.compress.distill:recipe_step",
}
# A quantized model can be neither pruned, distilled, factorised nor quantized again.
LAST_ONLY = ("quantize",)


def quantize_step(model: LeanModel, config: BaseConfig, *, calibration: list[str] | None = None,
                  **_: Any) -> LeanModel:
    from leanlm.compress.quantize import QuantContext, quantize_

    return quantize_(model, config, QuantContext(calibration=calibration))


def prune_step(model: LeanModel, config: BaseConfig, *, calibration: list[str] | None = None,
               labels: list[int] | None = None, **_: Any) -> LeanModel:
    from leanlm.compress.prune import PruneContext, prune_

    return prune_(model, config, PruneContext(calibration=calibration, labels=labels))


# ----------------------------------------------------------------------------- the recipe

@dataclass(frozen=True)
class Recipe:
    """A validated recipe: the data it uses and its steps as technique configs.

    Args:
        steps: technique configs in order (each from a registered family).
        data: dataset name or file for calibration texts, labels and distillation (None: no data).
        calibration_size: how many training texts (and labels) each step gets as calibration.

    Example:
        >>> r = Recipe.from_dict({"steps": [{"quantize": {"type": "int8-dynamic"}}]})
        >>> r.steps[0].name
        'int8-dynamic'
    """

    steps: tuple[BaseConfig, ...]
    data: str | None = None
    calibration_size: int = DEFAULT_CALIBRATION_SIZE

    @classmethod
    def from_dict(cls, raw: Any) -> "Recipe":
        if not isinstance(raw, Mapping):
            raise ConfigError(f"a recipe is a mapping with {', '.join(_KEYS)}; got {type(raw).__name__}")
        for key in raw:
            if key not in _KEYS:
                raise ConfigError("recipe: " + did_you_mean(str(key), _KEYS, "key"))
        size = raw.get("calibration_size", DEFAULT_CALIBRATION_SIZE)
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ConfigError(f"recipe: calibration_size must be an integer >= 1; got {size!r}")
        data = raw.get("data")
        if data is not None and not isinstance(data, str):
            raise ConfigError(f"recipe: data must be a dataset name or file; got {data!r}")
        steps = raw.get("steps")
        if not isinstance(steps, list) or not steps:
            raise ConfigError("recipe: steps must be a non-empty list of {family: {type: name, ...options}}")
        configs = tuple(_step_config(i, s) for i, s in enumerate(steps, 1))
        for i, c in enumerate(configs[:-1], 1):
            if c.family in LAST_ONLY:
                raise ConfigError(f"recipe step {i} ({c.family}/{c.name}) must be the last step: "
                                  f"a {c.family}d model cannot be compressed further")
        return cls(steps=configs, data=data, calibration_size=size)

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data, "calibration_size": self.calibration_size,
                "steps": [{c.family: c.to_dict()} for c in self.steps]}


def _families() -> list[str]:
    from leanlm.config import _CONFIGS, _load_plugins

    _load_plugins()
    return sorted({f for f, _ in _CONFIGS} | set(RUNNERS))


def _step_config(i: int, step: Any) -> BaseConfig:
    if not isinstance(step, Mapping) or len(step) != 1:
        raise ConfigError(f"recipe step {i}: write it as {{family: {{type: name, ...options}}}}; got {step!r}")
    (family, options), = step.items()
    if family not in _families():
        raise ConfigError(f"recipe step {i}: " + did_you_mean(str(family), _families(), "step family"))
    options = {"type": options} if isinstance(options, str) else options  # `- quantize: int8-dynamic`
    if not isinstance(options, Mapping) or "type" not in options:
        raise ConfigError(f"recipe step {i} ({family}): give its method as {{type: name, ...options}}")
    try:
        cls = lookup(family, str(options["type"]))
    except ConfigError as e:
        if not _has_configs(family):
            raise ConfigError(f"recipe step {i} needs a {family} method, and this leanlm registers none "
                              f"(they come from leanlm.compress.{family})") from None
        raise ConfigError(f"recipe step {i}: {e}") from None
    try:
        config = cls.from_dict(dict(options))
    except ConfigError as e:
        raise ConfigError(f"recipe step {i} ({family}/{cls.name}): {e}") from None
    runner(family, i)  # a missing runner is found now, before any step runs
    return config


def _has_configs(family: str) -> bool:
    from leanlm.config import names

    return bool(names(family))


def runner(family: str, step: int | None = None) -> Callable[..., LeanModel]:
    """The function that runs one step of `family` (see RUNNERS)."""
    target = RUNNERS.get(family, f"leanlm.compress.{family}:recipe_step")
    module, _, name = target.partition(":")
    where = f"recipe step {step} ({family})" if step else f"recipe family {family}"
    try:
        fn = getattr(importlib.import_module(module), name, None)
    except ModuleNotFoundError as e:
        if not (e.name and module.startswith(e.name)):
            raise ConfigError(f"{where} needs {e.name} (not installed), imported by {module}") from None
        fn = None
    if fn is None:
        raise ConfigError(f"{where} needs {module}.{name}, which this leanlm does not have")
    return fn


# YAML 1.1 reads 1e-4 as a string (it wants 1.0e-4); recipes write learning rates like that.
def _yaml_loader() -> Any:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?\d+(\.\d*)?[eE][-+]?\d+$"),
                                 list("-+0123456789"))
    return Loader


def load_recipe(source: str | os.PathLike | Mapping[str, Any] | Recipe) -> Recipe:
    """A Recipe from a YAML/JSON file, a dict, or a Recipe; every step validated."""
    if isinstance(source, Recipe):
        return source
    if isinstance(source, Mapping):
        return Recipe.from_dict(source)
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"recipe file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except Exception as e:  # yaml.YAMLError / json.JSONDecodeError: report where, on one line
        raise ConfigError(f"recipe {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                          f"{' '.join(str(e).split())}") from None
    return Recipe.from_dict(raw)


# ----------------------------------------------------------------------------- running

def _checksum(directory: Path) -> str:
    return hashlib.sha256((directory / RECORD_FILE).read_bytes()).hexdigest()


def step_dir_name(index: int, config: BaseConfig) -> str:
    return f"{index:02d}-{config.name}"


class _Inputs:
    """Task data and teacher, loaded once and only if a step runs."""

    def __init__(self, model_dir: Path, recipe: Recipe, progress: bool = False):
        self.model_dir, self.recipe, self.progress = model_dir, recipe, progress
        self._splits: Any = None

    def splits(self) -> Any:
        if self._splits is None and self.recipe.data:
            from leanlm.data import load_splits

            self._splits = load_splits(self.recipe.data)
        return self._splits

    def kwargs(self, fn: Callable[..., Any]) -> dict[str, Any]:
        from leanlm.models.loading import load

        splits = self.splits()
        n = self.recipe.calibration_size
        out = {"splits": splits, "calibration": list(splits.train.texts[:n]) if splits else None,
               "labels": list(splits.train.labels[:n]) if splits else None, "teacher": None}
        if "teacher" in inspect.signature(fn).parameters:  # only steps that use one pay for loading it
            out["teacher"] = load(self.model_dir)  # fresh: one step cannot change the next one's teacher
        if "progress" in inspect.signature(fn).parameters:  # training steps show their progress bar
            out["progress"] = self.progress
        return out


def _params(model: LeanModel) -> int | None:
    import torch

    if not isinstance(model.module, torch.nn.Module):
        return None
    return int(sum(p.numel() for p in model.module.parameters()))


def _reusable(directory: Path, key: dict[str, Any], input_sha: str) -> bool:
    try:
        rec = read_record(directory, verify=False)
    except ArtifactError:
        return False
    prov = rec.extra.get("recipe") or {}
    return prov.get("step_key") == key and prov.get("input_sha256") == input_sha


def _point_final(out: Path, target: str | None) -> None:
    link = out / FINAL
    if target is None:  # a failed run: no final result to point at
        if link.is_symlink():
            link.unlink()
        return
    tmp = out / f".{FINAL}.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)  # atomic: readers see the old or the new pointer, never none


def run_recipe(model_dir: str | os.PathLike, out_dir: str | os.PathLike,
               recipe: str | os.PathLike | Mapping[str, Any] | Recipe, overwrite: bool = False,
               progress: bool = True) -> LeanModel:
    """Run a recipe's steps in order, each from the previous step's model directory.

    Args:
        model_dir: a leanlm model directory (the input, and the teacher of distillation steps).
        out_dir: where the step directories, recipe.json and `final` go.
        recipe: a recipe file (YAML/JSON), dict or Recipe.
        overwrite: redo every step even where a matching step directory exists.
        progress: print one line per step.

    Returns the last step's model (also at `out_dir/final`). A failing step leaves the steps
    before it intact, writes nothing half-done, records the failure in recipe.json and raises.

    Example:
        >>> m = run_recipe("runs/sentiment", "runs/small", {"data": "movie-snippets", "steps": [
        ...     {"prune": {"type": "heads", "ratio": 0.4}}, {"quantize": {"type": "int8-dynamic"}}]})
    """
    from leanlm.models.loading import load

    recipe = load_recipe(recipe)
    model_dir, out = Path(model_dir), Path(out_dir)
    read_record(model_dir, verify=False)  # a leanlm model directory, or one clear line
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / RECIPE_FILE).exists() and not overwrite:
        raise ArtifactError(f"{out} is not empty and holds no {RECIPE_FILE}; choose another output or pass overwrite")
    out.mkdir(parents=True, exist_ok=True)
    say = print if progress else (lambda *a, **k: None)
    inputs = _Inputs(model_dir, recipe, progress)
    status = [{"step": i, "dir": step_dir_name(i, c), "config": c.to_dict(), "status": "pending"}
              for i, c in enumerate(recipe.steps, 1)]
    summary = {"recipe": recipe.to_dict(), "input": str(model_dir), "final": None, "steps": status}

    def write_summary() -> None:
        atomic_write_text(out / RECIPE_FILE, json.dumps(summary, indent=2) + "\n")

    source, model = model_dir, None
    for i, config in enumerate(recipe.steps, 1):
        entry, target = status[i - 1], out / status[i - 1]["dir"]
        key = {"config": config.to_dict(), "data": recipe.data, "calibration_size": recipe.calibration_size}
        input_sha = _checksum(source)
        label = f"step {i}/{len(recipe.steps)} {config.family} {config.name}"
        if not overwrite and _reusable(target, key, input_sha):
            say(f"{label}: reusing {target} (same step, same input)")
            entry.update(status="reused", **_measure(target))
            write_summary()
            source, model = target, None
            continue
        say(f"{label}: from {source}")
        t0 = time.perf_counter()
        try:
            fn = runner(config.family, i)
            model = fn(load(source), config, **inputs.kwargs(fn))
            model.record.extra["recipe"] = {"recipe": recipe.to_dict(), "step": i, "step_key": key,
                                            "input": str(source), "input_sha256": input_sha,
                                            "params": _params(model)}
            model.save(target, overwrite=True)
        except Exception as e:
            entry.update(status="failed", error=" ".join(str(e).split())[:500])
            _point_final(out, None)
            write_summary()
            kept = f"; steps 1-{i - 1} are in {out}" if i > 1 else ""
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            if isinstance(e, LeanlmError):
                raise type(e)(f"recipe step {i} ({config.family}/{config.name}) failed: {reason}{kept}") from e
            raise LeanlmError(f"recipe step {i} ({config.family}/{config.name}) failed: "
                              f"{type(e).__name__}: {reason}{kept}") from e
        entry.update(status="done", seconds=round(time.perf_counter() - t0, 2), **_measure(target))
        say(f"{label}: wrote {target} ({entry['params']} params, {entry['size_bytes'] / 1e6:.1f} MB, "
            f"{entry['seconds']} s)")
        write_summary()
        source = target
    summary["final"] = status[-1]["dir"]
    _point_final(out, summary["final"])
    write_summary()
    return model if model is not None else load(source)


def _measure(directory: Path) -> dict[str, Any]:
    prov = read_record(directory, verify=False).extra.get("recipe") or {}
    return {"params": prov.get("params"), "size_bytes": directory_size(directory)}
