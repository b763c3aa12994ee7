"""Cascades: the escalation rule at its edges, calibration, round trips, benchmark, CLI, OpenVINO members."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import leanlm
from leanlm.bench.measure import SENTENCES, BenchConfig, benchmark
from leanlm.compress.cascade import DEFAULT_DROP, CascadeConfig, calibration_curve, cascade
from leanlm.compress.ensemble import compose
from leanlm.data import TextDataset
from leanlm.errors import ConfigError, LeanlmError, UnsupportedError
from leanlm.models.tiny import tiny_encoder
from leanlm.runtime.composite import confidence

TEXTS = list(SENTENCES[:24])
LABELS = [0, 1, 1, 0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 0, 1]
DATA = TextDataset(TEXTS, LABELS, ["negative", "positive"], "toy")


def _uncertain(model, texts, spread=4.0):
    """Point the classifier along the pooled outputs' main direction of variation, centred: inputs
    near the middle get ~0.5 confidence, those at the ends up to sigmoid(spread)."""
    with torch.no_grad():
        pooled = model.module.bert(**model.encode(texts)).pooler_output  # (N, H)
        mean = pooled.mean(0)
        u = torch.linalg.svd(pooled - mean, full_matrices=False).Vh[0]
        s = spread / ((pooled - mean) @ u).abs().max()
        model.module.classifier.weight.copy_(torch.stack([-u, u]) * s / 2)
        model.module.classifier.bias.copy_(torch.stack([u @ mean, -(u @ mean)]) * s / 2)
    return model


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("cascade")
    _uncertain(tiny_encoder(seed=1), TEXTS).save(root / "small")
    tiny_encoder(seed=2, layers=3).save(root / "large")
    return root / "small", root / "large"


@pytest.fixture(scope="module")
def loaded(pair):
    return leanlm.load(pair[0]), leanlm.load(pair[1])


def _conf(model, texts):
    return confidence(model(**model.encode(texts)))


# ----------------------------------------------------------------------------- the escalation rule

def test_small_model_is_uncertain_on_some_inputs(loaded):
    conf = _conf(loaded[0], TEXTS)
    assert conf.min() < 0.6 and conf.max() > 0.9


def test_escalates_exactly_rows_below_threshold(pair, loaded):
    small, large = loaded
    conf = _conf(small, TEXTS)
    t = float(conf.sort().values[10])  # a confidence that really occurs: that row stays
    m = cascade(*pair, threshold=t)
    batch = m.encode(TEXTS)
    out = m(**batch)
    esc = (conf < t).nonzero().flatten().tolist()
    assert 0 < len(esc) < len(TEXTS) and int((conf == t).sum()) >= 1
    assert m.runner.stats() == {"seen": len(TEXTS), "escalated": len(esc), "escalated_share": len(esc) / len(TEXTS),
                                "per_stage": [len(esc)]}
    # escalated rows: exactly the large model run alone on those texts (padded to the longest of them)
    alone = large(**large.encode([TEXTS[i] for i in esc]))
    torch.testing.assert_close(out[esc], alone, atol=1e-6, rtol=1e-6)
    kept = [i for i in range(len(TEXTS)) if i not in esc]
    assert torch.equal(out[kept], small(**batch)[kept])
    m.runner.reset_stats()
    assert m.runner.stats()["seen"] == 0 and m.runner.stats()["escalated_share"] is None


@pytest.mark.parametrize("threshold,escalate_all", [(0.0, False), (1.5, True)])
def test_threshold_edges(threshold, escalate_all, pair, loaded):
    small, large = loaded
    m = cascade(*pair, threshold=threshold)
    batch = m.encode(TEXTS)
    out = m(**batch)
    assert m.runner.stats()["escalated"] == (len(TEXTS) if escalate_all else 0)
    torch.testing.assert_close(out, (large if escalate_all else small)(**batch), atol=1e-6, rtol=1e-6)


def test_margin_confidence_and_three_stages(tmp_path, pair, loaded):
    small, large = loaded
    probs = torch.softmax(small(**small.encode(TEXTS)), -1)
    margin = (probs[:, 0] - probs[:, 1]).abs()
    torch.testing.assert_close(confidence(small(**small.encode(TEXTS)), "margin"), margin)
    m = compose([pair[0], pair[1], pair[1]], CascadeConfig(threshold=0.999, confidence="margin"))
    m.predict(TEXTS)
    esc = margin < 0.999
    again = int((confidence(large(**large.encode(TEXTS)), "margin")[esc] < 0.999).sum())
    assert m.runner.stats()["per_stage"] == [int(esc.sum()), again]
    with pytest.raises(ConfigError, match="two stages"):
        compose([pair[0], pair[1], pair[1]], CascadeConfig(), data=DATA)


# ----------------------------------------------------------------------------- calibration

def test_calibration_curve_by_hand():
    conf = np.array([0.9, 0.6, 0.6, 0.8], dtype=np.float32)
    small_ok = np.array([1, 0, 1, 1], bool)
    large_ok = np.array([1, 1, 1, 0], bool)
    curve = calibration_curve(conf, small_ok, large_ok)
    assert [(p["threshold"], p["escalated_share"], p["accuracy"]) for p in curve] == [
        (0.0, 0.0, 0.75),
        (float(np.float32(0.8)), 0.5, 1.0),  # both 0.6 rows escalated: large gets them right
        (float(np.float32(0.9)), 0.75, 0.75),  # + the 0.8 row, which large gets wrong
        (float(np.nextafter(np.float32(0.9), np.float32(np.inf))), 1.0, 0.75),
    ]


def _brute_force(small, large, ds):
    """(threshold, escalated share, accuracy) for every confidence value as threshold, by direct counting."""
    conf = _conf(small, ds.texts)
    sp = small(**small.encode(ds.texts)).argmax(-1)
    lp = large(**large.encode(ds.texts)).argmax(-1)
    y = torch.tensor(ds.labels)
    out = []
    for t in [0.0] + sorted(set(conf.tolist())) + [2.0]:
        esc = conf < t
        out.append((t, float(esc.float().mean()), float(torch.where(esc, lp, sp).eq(y).float().mean())))
    return out


def test_calibrates_target_accuracy_and_escalation(pair, loaded, tmp_path):
    points = _brute_force(*loaded, DATA)
    target = sorted({a for _, _, a in points})[-2]  # reachable, below the best point
    share = min(s for _, s, a in points if a >= target)
    m = cascade(*pair, data=DATA, target_accuracy=target, output=tmp_path / "acc")
    cal = m.record.extra["composite"]["calibration"]
    assert cal["escalated_share"] == pytest.approx(share) and cal["accuracy"] >= target
    assert cal["small_accuracy"] == pytest.approx(points[0][2]) and cal["large_accuracy"] == pytest.approx(points[-1][2])
    m.predict(TEXTS)
    assert m.runner.stats()["escalated_share"] == pytest.approx(share)
    # the curve is in leanlm.json after a round trip
    back = leanlm.load(tmp_path / "acc").record.extra["composite"]["calibration"]
    assert back["curve"][0]["escalated_share"] == 0.0 and back["curve"][-1]["escalated_share"] == 1.0
    assert back["threshold"] == cal["threshold"] and back["data"]["dataset"] == "toy"

    m = cascade(*pair, data=DATA, target_escalation=0.25)
    cal = m.record.extra["composite"]["calibration"]
    assert cal["escalated_share"] == pytest.approx(max(s for _, s, _ in points if s <= 0.25))
    m.predict(TEXTS)
    assert m.runner.stats()["escalated_share"] == pytest.approx(cal["escalated_share"])

    if max(a for _, _, a in points) < 1.0:
        with pytest.raises(ConfigError, match="out of reach"):
            cascade(*pair, data=DATA, target_accuracy=1.0)


def test_default_target_is_the_large_models_accuracy(pair, loaded):
    points = _brute_force(*loaded, DATA)
    cal = cascade(*pair, data=DATA).record.extra["composite"]["calibration"]
    assert DEFAULT_DROP == 0.0 and cal["target"]["large_accuracy_minus"] == DEFAULT_DROP
    assert cal["accuracy"] >= cal["large_accuracy"] - 1e-12
    assert cal["escalated_share"] == pytest.approx(min(s for _, s, a in points if a >= points[-1][2] - 1e-12))


def test_bad_cascades_are_refused(pair, tmp_path):
    with pytest.raises(ConfigError, match="at most one"):
        CascadeConfig(threshold=0.5, target_escalation=0.2)
    with pytest.raises(ConfigError, match="target_escalation"):
        CascadeConfig(target_escalation=1.5)
    with pytest.raises(ConfigError, match="needs data"):
        cascade(*pair)
    tiny_encoder("feature-extraction").save(tmp_path / "emb")
    tiny_encoder("feature-extraction", seed=2).save(tmp_path / "emb2")
    with pytest.raises(UnsupportedError, match="sequence-classification"):
        cascade(tmp_path / "emb", tmp_path / "emb2", threshold=0.5)
    assert CascadeConfig.from_json(CascadeConfig(target_accuracy=0.8).to_json()) == CascadeConfig(target_accuracy=0.8)


# ----------------------------------------------------------------------------- benchmark, CLI, OpenVINO

def test_benchmark_reports_escalated_share_and_member_sizes(pair, loaded):
    from leanlm.artifact import directory_size

    m = cascade(*pair, threshold=0.9)
    cfg = BenchConfig(repeats=1, throughput_repeats=1, memory=False, warmup=0, seq_len=32, throughput_batch=4)
    res = benchmark({"small": pair[0], "cascade": m}, data=DATA, config=cfg, progress=False)
    row = res.row("cascade")
    expected = float((_conf(loaded[0], TEXTS) < 0.9).float().mean())
    assert row["escalated"] == pytest.approx(expected) and 0 < expected < 1
    assert res.row("small")["escalated"] is None
    assert row["artifact_bytes"] == directory_size(pair[0]) + directory_size(pair[1])
    assert row["params"] == sum(p.numel() for x in loaded for p in x.module.parameters())
    assert row["accuracy"] is not None and "escalated" in res.to_dict()["rows"][1]


def _main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """`leanlm ARGS` in this process (the error handling of leanlm.cli.main included)."""
    from leanlm.cli import main

    monkeypatch.setattr(sys, "argv", ["leanlm", *args])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_end_to_end(pair, tmp_path, monkeypatch, capsys):
    csv = tmp_path / "toy.csv"
    csv.write_text("text,label\n" + "".join(f"\"{t}\",{y}\n" for t, y in zip(TEXTS * 2, LABELS * 2)))
    # one real subprocess, as a user runs it
    env = dict(os.environ, PYTHONPATH=str(Path(leanlm.__file__).resolve().parents[1]))
    r = subprocess.run([sys.executable, "-m", "leanlm.cli", "cascade", "cas", str(pair[0]), str(pair[1]),
                        "--dataset", str(csv), "--target-escalation", "0.3"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "threshold" in r.stdout and "validation accuracy" in r.stdout and "escalated" in r.stdout
    assert leanlm.load(tmp_path / "cas").record.extra["composite"]["calibration"]["escalated_share"] <= 0.3
    code, out, err = _main(monkeypatch, capsys, "ensemble", str(tmp_path / "ens"), str(pair[0]), str(pair[1]),
                           "--mode", "vote", "--weights", "2,1")
    assert code == 0 and "ensemble of 2 (vote, weights 2,1)" in out, err
    assert leanlm.load(tmp_path / "ens").record.extra["composite"]["weights"] == [2.0, 1.0]
    code, out, err = _main(monkeypatch, capsys, "cascade", str(tmp_path / "bad"), str(pair[0]), str(pair[1]),
                           "--threshold", "0.5", "--target-accuracy", "0.9")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "at most one" in err
    assert not (tmp_path / "bad").exists()


def test_openvino_large_member(pair, loaded, tmp_path):
    pytest.importorskip("openvino")
    from leanlm.runtime.convert import convert

    small, large = loaded
    convert(large, "openvino").save(tmp_path / "large-ov")
    m = cascade(pair[0], tmp_path / "large-ov", threshold=0.9, output=tmp_path / "cas")
    back = leanlm.load(tmp_path / "cas")
    assert [x.backend for x in back.runner.members] == ["torch", "openvino"]
    batch = back.encode(TEXTS)
    out = back(**batch)
    esc = (_conf(small, TEXTS) < 0.9).nonzero().flatten().tolist()
    assert back.runner.stats()["escalated"] == len(esc) > 0
    torch.testing.assert_close(out[esc], large(**large.encode([TEXTS[i] for i in esc])), atol=1e-4, rtol=1e-4)
    assert torch.equal(out, m(**batch))
