"""Composed recipes: step directories, provenance, reuse, failure, validation and the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import leanlm
from leanlm.compress.recipe import RECIPE_FILE, Recipe, load_recipe, run_recipe
from leanlm.config import _CONFIGS, _TRANSFORMS, BaseConfig, check, register, transform
from leanlm.errors import ConfigError, LeanlmError

ROOT = Path(__file__).resolve().parents[2]


# Test-only prune methods, registered only while these tests run (a module-level @register would
# leak them into other families' contract tables in the same session).
@dataclass(frozen=True)
class DropLastNeuron(BaseConfig):
    """Drop the last `count` feed-forward neurons of every layer (a tiny structured prune)."""

    count: int = 1

    def validate(self) -> None:
        check(self.count >= 1, f"count must be >= 1, got {self.count}")


@dataclass(frozen=True)
class Explode(BaseConfig):
    """Always fails while running (a step that breaks mid-recipe)."""


SEEN: list[dict] = []


def _drop_last(model, config, context):
    SEEN.append({"calibration": len(context.calibration or []), "labels": len(context.labels or [])})
    for layer in model.module.bert.encoder.layer:
        up, down = layer.intermediate.dense, layer.output.dense
        keep = up.out_features - config.count
        new_up = torch.nn.Linear(up.in_features, keep)
        new_up.weight.data, new_up.bias.data = up.weight.data[:keep].clone(), up.bias.data[:keep].clone()
        new_down = torch.nn.Linear(keep, down.out_features)
        new_down.weight.data, new_down.bias.data = down.weight.data[:, :keep].clone(), down.bias.data.clone()
        layer.intermediate.dense, layer.output.dense = new_up, new_down
    return {"neurons": keep}


def _explode(model, config, context):
    raise RuntimeError("boom")


@pytest.fixture(scope="module", autouse=True)
def test_methods():
    for name, cls, fn in (("test-drop-last", DropLastNeuron, _drop_last), ("test-explode", Explode, _explode)):
        register("prune", name)(cls)
        transform(cls)(fn)
    yield
    for name, cls in (("test-drop-last", DropLastNeuron), ("test-explode", Explode)):
        _CONFIGS.pop(("prune", name), None)
        _TRANSFORMS.pop(cls, None)


@pytest.fixture(scope="module")
def model_dir(tiny_clf, tmp_path_factory):
    return tiny_clf.save(tmp_path_factory.mktemp("recipe") / "tiny-clf")


def _recipe(*steps, data=None):
    return {"data": data, "calibration_size": 16, "steps": list(steps)}


DROP = {"prune": {"type": "test-drop-last"}}
DROP2 = {"prune": {"type": "test-drop-last", "count": 2}}
INT8 = {"quantize": {"type": "int8-dynamic"}}


def _ffn(model) -> int:
    return model.module.bert.encoder.layer[0].intermediate.dense.out_features


def _leftovers(out: Path) -> list[str]:
    return [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_three_steps_each_dir_loads_with_provenance(model_dir, tmp_path, capsys):
    width = _ffn(leanlm.load(model_dir))
    out = tmp_path / "out"
    final = run_recipe(model_dir, out, _recipe(DROP, DROP2, INT8))
    assert [p.name for p in sorted(out.iterdir())] == ["01-test-drop-last", "02-test-drop-last", "03-int8-dynamic",
                                                      "final", RECIPE_FILE]
    assert _ffn(leanlm.load(out / "01-test-drop-last")) == width - 1
    second = leanlm.load(out / "02-test-drop-last")
    assert _ffn(second) == width - 3
    third = leanlm.load(out / "final")
    assert [t["type"] for t in third.record.techniques] == ["test-drop-last", "test-drop-last", "int8-dynamic"]
    batch = third.encode(["a fine film"])
    assert torch.isfinite(third(**batch)).all() and final.record.techniques == third.record.techniques
    prov = second.record.extra["recipe"]
    assert prov["step"] == 2 and prov["input"] == str(out / "01-test-drop-last")
    assert prov["recipe"]["steps"][1] == {"prune": {"type": "test-drop-last", "count": 2}}
    import hashlib

    assert prov["input_sha256"] == hashlib.sha256((out / "01-test-drop-last/leanlm.json").read_bytes()).hexdigest()
    summary = json.loads((out / RECIPE_FILE).read_text())
    assert summary["final"] == "03-int8-dynamic" and [s["status"] for s in summary["steps"]] == ["done"] * 3
    assert all(s["params"] > 0 and s["size_bytes"] > 0 and s["seconds"] >= 0 for s in summary["steps"])
    assert summary["steps"][0]["params"] > summary["steps"][1]["params"]
    assert not _leftovers(out)

    # a re-run reuses every step
    capsys.readouterr()
    run_recipe(model_dir, out, _recipe(DROP, DROP2, INT8))
    printed = capsys.readouterr().out
    assert printed.count("reusing") == 3
    assert [s["status"] for s in json.loads((out / RECIPE_FILE).read_text())["steps"]] == ["reused"] * 3

    # a changed step 2 re-runs step 2 and everything after it, not step 1
    stamp = (out / "01-test-drop-last/leanlm.json").stat().st_mtime_ns
    run_recipe(model_dir, out, _recipe(DROP, {"prune": {"type": "test-drop-last", "count": 3}}, INT8))
    steps = json.loads((out / RECIPE_FILE).read_text())["steps"]
    assert [s["status"] for s in steps] == ["reused", "done", "done"]
    assert (out / "01-test-drop-last/leanlm.json").stat().st_mtime_ns == stamp
    assert _ffn(leanlm.load(out / "final")) == width - 4


def test_failing_step_keeps_earlier_steps_and_writes_nothing_half(model_dir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(LeanlmError, match=r"recipe step 3 \(prune/test-explode\) failed: RuntimeError: boom") as e:
        run_recipe(model_dir, out, _recipe(DROP, DROP2, {"prune": {"type": "test-explode"}}), progress=False)
    assert len(str(e.value).splitlines()) == 1
    assert leanlm.load(out / "01-test-drop-last") and leanlm.load(out / "02-test-drop-last")
    assert not (out / "03-test-explode").exists() and not (out / "final").exists() and not _leftovers(out)
    steps = json.loads((out / RECIPE_FILE).read_text())["steps"]
    assert [s["status"] for s in steps] == ["done", "done", "failed"] and "boom" in steps[2]["error"]


@pytest.mark.parametrize("steps,needle", [
    ([{"prnue": {"type": "test-drop-last"}}], "step 1: unknown step family 'prnue'. Did you mean 'prune'?"),
    ([DROP, {"prune": {"type": "test-drop-lats"}}], "step 2: unknown prune method 'test-drop-lats'"),
    ([DROP, {"prune": {"type": "test-drop-last", "count": 0}}], "step 2 (prune/test-drop-last): count must be >= 1"),
    ([DROP, {"prune": {"type": "test-drop-last", "cuont": 2}}], "unknown option(s) ['cuont']"),
    ([INT8, DROP], "step 1 (quantize/int8-dynamic) must be the last step"),
    ([{"prune": "test-drop-last", "quantize": "int8-dynamic"}], "step 1: write it as"),
    ([], "steps must be a non-empty list"),
])
def test_invalid_recipe_fails_before_anything_runs(model_dir, tmp_path, steps, needle):
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as e:
        run_recipe(model_dir, out, _recipe(*steps), progress=False)
    assert needle in str(e.value) and len(str(e.value).splitlines()) == 1, str(e.value)
    assert not out.exists()


def test_recipe_keys_and_files(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean 'steps'"):
        Recipe.from_dict({"stpes": [INT8]})
    y = tmp_path / "r.yaml"
    y.write_text("data: movie-snippets\nsteps:\n  - quantize: int8-dynamic\n  - {}\n")
    with pytest.raises(ConfigError, match="step 2: write it as"):
        load_recipe(y)
    y.write_text("steps: [ {quantize: \n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(y)
    j = tmp_path / "r.json"
    j.write_text(json.dumps({"steps": [INT8], "calibration_size": 8}))
    r = load_recipe(j)
    assert r.calibration_size == 8 and Recipe.from_dict(r.to_dict()) == r


def test_example_recipes_validate_where_their_methods_exist():
    import yaml

    from leanlm.config import names

    missing = {}
    for path in sorted((ROOT / "examples" / "recipes").glob("*.yaml")):
        steps = yaml.safe_load(path.read_text())["steps"]
        absent = [f"{f}/{o['type']}" for s in steps for f, o in s.items() if o["type"] not in names(f)]
        if absent:  # prune/lowrank/distill methods land from other branches
            missing[path.name] = absent
            continue
        r = load_recipe(path)
        assert r.data == "movie-snippets" and len(r.steps) == len(steps)
    if missing:
        pytest.skip(f"methods not registered in this checkout: {missing}")


def test_absent_family_module_says_which_step_needs_what(monkeypatch):
    from leanlm.compress import recipe

    monkeypatch.setitem(recipe.RUNNERS, "prune", "leanlm.compress.no_such_module:recipe_step")
    with pytest.raises(ConfigError, match=r"recipe step 1 \(prune\) needs leanlm.compress.no_such_module"):
        Recipe.from_dict({"steps": [DROP, DROP2]})


def test_calibration_and_labels_come_from_the_data(model_dir, tmp_path):
    SEEN.clear()
    run_recipe(model_dir, tmp_path / "out", _recipe(DROP, data="movie-snippets"), progress=False)
    assert SEEN == [{"calibration": 16, "labels": 16}]


def test_cli_end_to_end_and_exit_codes(model_dir, tmp_path):
    # the test-only methods exist in this process only, so the CLI runs real registered steps
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps:\n  - quantize: {type: int8-dynamic}\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "leanlm.cli", "compress", *map(str, args)], capture_output=True,
                              text=True, cwd=ROOT, env=env, timeout=300)

    out = tmp_path / "out"
    r = cli(model_dir, out, "--recipe", recipe)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and (out / "final").exists()
    assert leanlm.load(out / "final").record.techniques[0]["type"] == "int8-dynamic"
    r = cli(model_dir, out, "--recipe", recipe)
    assert r.returncode == 0 and "reusing" in r.stdout

    recipe.write_text("steps:\n  - quantize: {type: int8-dynamc}\n")
    r = cli(model_dir, tmp_path / "bad", "--recipe", recipe)
    assert r.returncode == 2 and not (tmp_path / "bad").exists()
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "Did you mean 'int8-dynamic'" in err[0], r.stderr
    r = cli(model_dir, tmp_path / "bad", "--recipe", tmp_path / "missing.yaml")
    assert r.returncode == 2 and "does not exist" in r.stderr
