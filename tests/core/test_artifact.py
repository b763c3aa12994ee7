import json

import pytest
import torch

import leanlm
from leanlm.artifact import RECORD_FILE, atomic_dir, read_record
from leanlm.errors import ArtifactError


def test_save_load_round_trip_float(tiny_clf, tmp_path, sentences):
    out = tiny_clf.save(tmp_path / "m")
    rec = json.loads((out / RECORD_FILE).read_text())
    assert rec["task"] == "sequence-classification" and rec["weights"] == "model.safetensors"
    assert "model.safetensors" in rec["files"] and rec["files"]["model.safetensors"]["sha256"]
    back = leanlm.load(out)
    batch = tiny_clf.encode(sentences)
    assert torch.equal(back(**batch), tiny_clf(**batch))
    assert back.labels == ["negative", "positive"]


def test_refuses_to_overwrite_and_leaves_no_temp(tiny_clf, tmp_path):
    tiny_clf.save(tmp_path / "m")
    with pytest.raises(ArtifactError, match="already exists"):
        tiny_clf.save(tmp_path / "m")
    tiny_clf.save(tmp_path / "m", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_failed_write_leaves_nothing_and_keeps_old(tmp_path):
    target = tmp_path / "good"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target, overwrite=True) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("crash mid-write")
    assert (target / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good"]


def test_missing_and_corrupt_directories(tiny_clf, tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        leanlm.load(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ArtifactError, match="not a model directory"):
        leanlm.load(empty)
    out = tiny_clf.save(tmp_path / "m")
    w = out / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum"):
        leanlm.load(out)
    w.unlink()
    with pytest.raises(ArtifactError, match="missing"):
        leanlm.load(out)
    (out / RECORD_FILE).write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt"):
        read_record(out)


def test_record_keeps_provenance(tiny_clf, tmp_path):
    m = tiny_clf.clone()
    m.record.data = {"dataset": "movie-snippets", "seed": 3}
    m.record.metrics["test"] = {"accuracy": 0.5}
    out = m.save(tmp_path / "m")
    rec = read_record(out)
    assert rec.data["seed"] == 3 and rec.metrics["test"]["accuracy"] == 0.5
    assert rec.created and rec.leanlm_version == leanlm.__version__
