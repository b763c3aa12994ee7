"""benchmarks/compress.py's building blocks on tiny models: argument parsing, roles, recipe outputs,
the peers, the verdict, and one --quick run end to end. Nothing here is a timing: no speed is asserted."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import _peers  # noqa: E402
import compress  # noqa: E402

from leanlm.errors import ArtifactError, ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, tiny_clf, tiny_emb):
    from leanlm.models.tiny import tiny_encoder

    root = tmp_path_factory.mktemp("compress")
    tiny_clf.save(root / "clf")
    tiny_encoder("sequence-classification", layers=1, seed=1).save(root / "small")
    tiny_emb.save(root / "emb")
    tiny_encoder("feature-extraction", layers=1).save(root / "emb-small")
    return root


def test_quick_sets_the_protocol_and_flags_win():
    a = compress.parse_args(["--quick", "--repeats", "5"])
    assert a.repeats == 5 and a.throughput_repeats == 1 and a.eval_limit == 64 and not a.memory
    b = compress.parse_args([])
    assert b.repeats == 10 and b.eval_limit is None and b.memory and b.out == "reports/compress"


def test_pairs_and_roles():
    assert compress.pairs(["a=x", " b = y=z "], "--row") == [("a", "x"), ("b", "y=z")]
    for bad in (["a"], ["=x"], ["a=x", "a=y"]):
        with pytest.raises(ConfigError):
            compress.pairs(bad, "--row")
    roles = compress.assign_roles(["composed-int8=q"], ["q", "cascade"], ["e"])
    assert roles == {"composed-int8": ("q", "--role"), "cascade": ("cascade", "row name")}
    with pytest.raises(ConfigError, match="unknown role"):
        compress.assign_roles(["fastest=q"], ["q"], [])
    with pytest.raises(ConfigError, match="embed-row"):
        compress.assign_roles(["embedder=q"], ["q"], [])


def test_recipe_final(tmp_path, dirs):
    import shutil

    assert compress.recipe_final(dirs / "clf") == dirs / "clf"
    out = tmp_path / "recipe"
    for stage in ("01-prune", "02-int8"):
        shutil.copytree(dirs / "small", out / stage)
    assert compress.recipe_final(out) == out / "02-int8"  # the last stage
    (out / "recipe.json").write_text(json.dumps({"final": "01-prune"}))
    assert compress.recipe_final(out) == out / "01-prune"  # what the recipe says
    with pytest.raises(ArtifactError, match="not a recipe output"):
        compress.recipe_final(tmp_path / "missing")


def _row(name, tp, real, acc=None, low=None, high=None, cos=None, delta=None):
    return {"name": name, "throughput_seq_s": tp, "traffic_texts_s": real, "accuracy": acc,
            "accuracy_delta_pts": delta, "accuracy_delta_low": low, "accuracy_delta_high": high,
            "embedding_mean_cosine": cos}


def test_verdict_judges_each_role_against_its_comparator():
    rows = [_row(compress.BASELINE, 10, 20, 0.85, 0, 0, delta=0.0), _row("peer: a", 40, 60), _row("peer: b", 50, 50),
            _row("pd", 19, 41, 0.846, -1.0, 0.2, delta=-0.4), _row("q", 101, 119, 0.85, -0.5, 0.5, delta=0.0),
            _row("casc", 30, 60, 0.842, -1.5, 0.1, delta=-0.8)]
    emb = [_row("L6", 10, 10, cos=1.0), _row("e", 20, 20, cos=0.979)]
    m = compress.Measured(rows, emb, {"prune-distill": ("pd", "--role"), "composed-int8": ("q", "--role"),
                                      "cascade": ("casc", "--role"), "embedder": ("e", "--role")})
    status = {t.role: compress.judge(t, m) for t in compress.TARGETS}
    assert status["prune-distill"][0] == "MET" and "1.90x float PyTorch eager (b32x128)" in status["prune-distill"][1]
    assert "-0.40 [-1.00, +0.20]" in status["prune-distill"][1]
    # fastest peer per column: b (50/s) at b32, a (60/s) on real texts; 119/60 < 2
    assert status["composed-int8"][0] == "NOT MET" and "1.98x peer: a (real texts)" in status["composed-int8"][1]
    assert status["cascade"][0] == "NOT MET"  # 3x its large member (the float model) but -0.8 pt > 0.5
    assert status["embedder"][0] == "NOT MET" and "cosine 0.9790" in status["embedder"][1]
    m.rows[-1].update(accuracy=0.848)
    assert compress.judge(compress.TARGETS[2], m)[0] == "MET"
    lines = compress.verdict_lines(compress.Measured(rows, [], {"prune-distill": ("pd", "row name")}))
    assert lines[-1].startswith("verdict: NOT MET, 1 of 4 targets met: prune-distill MET (1.90x")
    assert "embedder NOT RUN" in lines[-1] and "row 'pd' by row name" in lines[0]


def test_peers_match_float_pytorch(tiny_clf, sentences):
    peers, skipped, _ = _peers.build_peers(tiny_clf, sentences * 4, shapes=[(2, 16)])
    assert not skipped and list(peers) == [_peers.PEER_ORT, _peers.PEER_OV, _peers.PEER_NNCF]
    batch = tiny_clf.encode(sentences[:2], max_length=16, padding="max_length")
    ref = tiny_clf(**batch)
    for name, peer in peers.items():
        out = peer(**batch)
        assert out.shape == ref.shape and torch.isfinite(out).all(), name
        assert (out - ref).abs().max() < 0.1 * ref.abs().max() + 0.05, name  # int8/bf16 of a random tiny model
    ov = peers[_peers.PEER_NNCF]
    assert ov.backend == "openvino" and ov.record.extra["runtime"]["shapes"] == [[2, 16]]
    assert ov.runner.precision in ("bf16", "fp32") and any("nncf.quantize" in n for n in ov.record.notes)


def test_quick_run_end_to_end(dirs, tmp_path, capsys):
    out = tmp_path / "report"
    rc = compress.main(["--model", str(dirs / "clf"), "--row", f"small={dirs / 'small'}", "--role", "prune-distill=small",
                        "--peers", "ov", "--embedder", str(dirs / "emb"), "--embed-row", f"e={dirs / 'emb-small'}",
                        "--quick", "--eval-limit", "40", "--traffic-limit", "40", "--other-texts", "4",
                        "--bootstrap", "50", "--repeats", "1", "--warmup", "0", "--out", str(out)])
    stdout = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and stdout[-1].startswith("verdict: ")
    assert any(line.startswith("| small | torch | prune-distill |") for line in stdout)
    assert any(line.startswith("| peer: OpenVINO bf16 | openvino |") for line in stdout)
    res = json.loads((out / "classifier" / "results.json").read_text())
    small = next(r for r in res["rows"] if r["name"] == "small")
    assert small["traffic_texts"] == 40 and small["traffic_ratio"] > 0 and small["accuracy_delta_low"] is not None
    emb = json.loads((out / "embedder" / "results.json").read_text())
    assert emb["data"]["n"] == 40 + 4 * len(compress.OTHER_DATASETS)
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["verdict"] == stdout[-1] and verdict["roles"] == {"prune-distill": "small"}
    assert (out / "summary.md").read_text().strip().endswith(stdout[-1])


def test_user_errors_are_one_red_line(dirs, tmp_path, capsys):
    rc = compress.main(["--model", str(dirs / "emb"), "--quick", "--peers", "none", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: --model must be a float PyTorch sequence classifier")
    assert compress.main(["--role", "x=y", "--out", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists()
