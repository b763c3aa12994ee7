"""The search end to end on a tiny real classifier and real texts, with an injected timer (no speed claims)."""
from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import leanlm
from leanlm.errors import ConfigError

from conftest import FAST, fake_timer  # tests/optimize/conftest.py

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def searched(tiny_model_dir, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("opt") / "out"
    res = leanlm.optimize(tiny_model_dir, out, data=str(tiny_data), max_accuracy_drop=50.0, trials=4,
                          timer=fake_timer, progress=False, **FAST)
    return out, res


def test_search_writes_report_and_a_servable_recommendation(searched):
    out, res = searched
    assert len(res.trials) == 4 and not res.impossible
    assert [r["status"] for r in res.trials[:3]] == ["accepted"] * 3  # the cheap-first seeds
    assert res.trials[0]["label"].startswith("int8-dynamic")
    rec = leanlm.load(out / "recommended")
    opt = rec.record.extra["optimize"]
    assert opt["trial"] in res.frontier and opt["recipe"]["steps"] and opt["search"]["max_accuracy_drop"] == 50.0
    assert set(opt["validation"]) >= {"accuracy", "delta_pts"} and "accuracy" in opt["test"]
    assert rec.predict(["a fine film"])
    from leanlm.serve import ModelRegistry, ServeConfig, create_app  # what `leanlm serve OUT/recommended` runs

    app = create_app(ModelRegistry.load([str(out / "recommended")], ServeConfig(warmup=False)))

    async def classify():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=30) as c:
            return await c.post("/v1/classify", json={"input": "a fine film"})

    assert asyncio.run(classify()).status_code == 200
    page = (out / "report.html").read_text()
    assert "leanlm serve" in page and "validation" in page and "test split" in page and "data:image/png" in page
    assert res.verdict.startswith("verdict: trial") and "test" in res.verdict
    saved = json.loads((out / "optimize.json").read_text())
    assert saved["recommended"] and len(saved["trials"]) == 4


def test_rerun_reuses_the_study_and_a_changed_dataset_starts_fresh(searched, tiny_model_dir, tiny_data, tmp_path):
    out, res = searched
    again = leanlm.optimize(tiny_model_dir, out, data=str(tiny_data), max_accuracy_drop=50.0, trials=4,
                            timer=fake_timer, progress=False, **FAST)
    assert again.key == res.key
    events = (out / f"search-{res.key}" / "events.jsonl").read_text().splitlines()
    assert len(events) == 4  # nothing was re-evaluated
    other = tmp_path / "other.csv"
    lines = tiny_data.read_text().splitlines()
    other.write_text("\n".join(lines[:-1]) + "\n")  # one text fewer: other data, other key
    from leanlm.data import load_splits
    from leanlm.optimize.search import OptimizeConfig, study_key

    cfg = OptimizeConfig(data=str(other), max_accuracy_drop=50.0, **FAST)
    assert study_key(tiny_model_dir, load_splits(str(other)), cfg) != res.key


def test_impossible_constraint_names_the_closest_candidates(tiny_model_dir, tiny_data, tmp_path):
    res = leanlm.optimize(tiny_model_dir, tmp_path / "out", data=str(tiny_data), max_accuracy_drop=0.0,
                          min_speedup=10.0, trials=3, timer=fake_timer, progress=False, **FAST)
    assert res.impossible and res.recommended is None
    assert "closest" in res.message and "fastest within -0 pts: trial" in res.message and "x2.00" in res.message
    assert (tmp_path / "out" / "report.html").exists() and not (tmp_path / "out" / "recommended").exists()
    assert all("below the speed target" in r["reason"] for r in res.trials)


def test_cli_exits_3_on_an_impossible_constraint_and_still_reports(tiny_model_dir, tiny_data, tmp_path, capsys):
    from leanlm.cli import main

    with pytest.raises(SystemExit) as e:
        main(["optimize", str(tiny_model_dir), str(tmp_path / "out"), "--task", str(tiny_data), "--backend", "torch",
              "--methods", "int8-dynamic", "--max-accuracy-drop", "0", "--min-speedup", "10", "--trials", "1",
              "--shape", "4x32", "--eval-limit", "16", "--threads", "1", "--repeats", "1", "--quiet"])
    out = capsys.readouterr().out
    assert e.value.code == 3 and "closest" in out and "report:" in out
    assert (tmp_path / "out" / "report.html").exists()


def test_abandons_a_prefix_that_already_misses_the_budget(tiny_model_dir, tiny_data, tmp_path):
    from leanlm.data import load_splits
    from leanlm.optimize.space import Candidate
    from leanlm.optimize.trial import build_candidate

    val = load_splits(str(tiny_data)).validation.head(16)
    cand = Candidate(steps=(("prune", {"type": "layers", "count": 1}), ("quantize", {"type": "int8-dynamic"})))
    res = build_candidate({"model_dir": str(tiny_model_dir), "builds": str(tmp_path), "candidate": cand.to_dict(),
                           "key": cand.key(), "data": str(tiny_data), "calibration_size": 16,
                           "val_texts": list(val.texts), "val_labels": list(val.labels), "label_names": val.label_names,
                           "baseline_correct": [1.0] * len(val),  # a perfect baseline: every cut misses
                           "max_drop": 1.0, "recover_points": 2.0, "bootstrap": 20, "seq_len": 32, "shapes": []})
    assert res["status"] == "abandoned" and "after step 1 (layers)" in res["reason"] and "quantize" in res["reason"]
    assert not list(tmp_path.glob("*/02-int8-dynamic"))  # the quantize step never ran


def test_budget_too_small_for_one_trial_says_so_before_starting(tiny_model_dir, tiny_data, tmp_path, capsys):
    from leanlm.cli import main

    with pytest.raises(ConfigError, match="cannot hold one trial"):
        leanlm.optimize(tiny_model_dir, tmp_path / "out", data=str(tiny_data), budget_minutes=0.0001,
                        progress=False, **FAST)
    assert not (tmp_path / "out").exists()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["optimize", str(tiny_model_dir), str(tmp_path / "o2"), "--task", str(tiny_data),
              "--budget-minutes", "0.0001", "--backend", "torch"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "cannot hold one trial" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o2").exists()


def test_a_misspelt_unlabeled_source_is_one_error_before_the_search(tiny_model_dir, tiny_data, tmp_path, capsys):
    from leanlm.cli import main

    with pytest.raises(SystemExit) as e:
        main(["optimize", str(tiny_model_dir), str(tmp_path / "out"), "--task", str(tiny_data), "--backend", "torch",
              "--unlabeled", "imbd", "--quiet"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "imdb" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


KILLABLE = """
import sys, time
sys.path.insert(0, {tests!r})
import torch; torch.set_num_threads(1)
import leanlm
from conftest import FAST, fake_timer
slow = {slow}
def timer(models, threads):
    time.sleep(slow)
    return fake_timer(models, threads)
res = leanlm.optimize({model!r}, {out!r}, data={data!r}, max_accuracy_drop=50.0, trials=4, timer=timer,
                      progress=False, **FAST)
print("DONE", len(res.trials))
"""


def test_killed_search_resumes_without_redoing_finished_trials(tiny_model_dir, tiny_data, tmp_path):
    out = tmp_path / "out"
    script = lambda slow: KILLABLE.format(tests=str(Path(__file__).parent), slow=slow, model=str(tiny_model_dir),
                                          out=str(out), data=str(tiny_data))
    proc = subprocess.Popen([sys.executable, "-c", script(0.4)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 90
    events = None
    while time.time() < deadline and proc.poll() is None:
        found = list(out.glob("search-*/events.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= 1:
            events = found[0]
            break
        time.sleep(0.1)
    assert events is not None, proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "no trial finished"
    proc.send_signal(signal.SIGKILL)  # mid-search: the next trial is being timed (the timer sleeps)
    proc.wait()
    before = [json.loads(l) for l in events.read_text().splitlines()]
    assert 1 <= len(before) < 4
    done = subprocess.run([sys.executable, "-c", script(0.0)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "DONE 4" in done.stdout, done.stderr[-2000:]
    after = [json.loads(l) for l in events.read_text().splitlines()]
    keys = [e["key"] for e in after]
    trials = json.loads((out / "optimize.json").read_text())["trials"]
    assert len(trials) == 4 and len(keys) == len(set(keys))  # each candidate evaluated once, across both runs
    assert len(keys) == len([t for t in trials if t.get("duplicate_of") is None])
    assert after[: len(before)] == before and {e["pid"] for e in after[len(before):]} != {before[0]["pid"]}


def test_a_student_is_not_abandoned_before_its_distillation(tiny_model_dir, tiny_data, tmp_path):
    from leanlm.data import load_splits
    from leanlm.optimize.space import Candidate
    from leanlm.optimize.trial import build_candidate

    val = load_splits(str(tiny_data)).validation.head(16)
    distill = {"type": "distill", "unlabeled": [str(tiny_data)], "unlabeled_size": 40,
               "loop": {"epochs": 1, "lr": 1e-4, "eval_every": 0}}
    cand = Candidate(steps=(("prune", {"type": "layers", "count": 1}), ("distill", distill)))
    res = build_candidate({"model_dir": str(tiny_model_dir), "builds": str(tmp_path), "candidate": cand.to_dict(),
                           "key": cand.key(), "data": str(tiny_data), "calibration_size": 16,
                           "val_texts": list(val.texts), "val_labels": list(val.labels), "label_names": val.label_names,
                           "baseline_correct": [1.0] * len(val),  # a perfect baseline: the cut alone misses
                           "max_drop": 1.0, "recover_points": 2.0, "bootstrap": 20, "seq_len": 32, "shapes": []})
    assert res["status"] == "built", res["reason"]
    assert res["steps"][0]["delta_pts"] < -3.0  # it did miss by more than the slack, and went on
