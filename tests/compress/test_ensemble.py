"""Ensembles as model directories, and the contract table of the compose family (ensemble, cascade)."""
from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

import leanlm
from leanlm.compress.cascade import CascadeConfig
from leanlm.compress.ensemble import EnsembleConfig, compose, ensemble
from leanlm.config import BaseConfig, names
from leanlm.data import TextDataset
from leanlm.errors import ArtifactError, ConfigError, LeanlmError
from leanlm.models.tiny import tiny_encoder


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("members")
    for seed in (1, 2, 3):
        tiny_encoder(seed=seed).save(root / f"m{seed}")
    return [root / f"m{seed}" for seed in (1, 2, 3)]


def _outputs(paths, batch):
    return torch.stack([leanlm.load(p)(**batch).float() for p in paths])  # (M, B, C)


# ----------------------------------------------------------------------------- contract table: family "compose"

CONTRACT = [
    EnsembleConfig(),
    EnsembleConfig(mode="vote", weights=(2.0, 1.0, 1.0)),
    CascadeConfig(threshold=0.5063),
    CascadeConfig(target_escalation=0.5),
]


@pytest.mark.parametrize("config", CONTRACT, ids=lambda c: c.to_json())
def test_compose_contract(config, dirs, tmp_path, sentences):
    assert config.name in names("compose")
    assert BaseConfig.from_json(config.to_json()) == config
    members = dirs if config.name == "ensemble" else dirs[:2]
    data = TextDataset(sentences, [i % 2 for i in range(len(sentences))], ["negative", "positive"], "toy")
    model = compose(members, config, data=data if config.name == "cascade" else None, output=tmp_path / "c")
    batch = model.encode(sentences)
    out = model(**batch)
    assert out.shape == (len(sentences), 2) and torch.isfinite(out).all()
    back = leanlm.load(tmp_path / "c")
    assert back.backend == "composite" and back.record.techniques == [config.to_dict()]
    assert back.record.extra["composite"]["kind"] == config.name
    assert torch.equal(back(**batch), out)
    assert back.predict(sentences) == model.predict(sentences)
    assert leanlm.evaluate(back, data)["n"] == len(sentences)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # atomic: no temp dirs left


# ----------------------------------------------------------------------------- ensemble semantics

def test_mean_is_weighted_mean_of_probabilities(dirs, sentences):
    batch = leanlm.load(dirs[0]).encode(sentences)
    probs = torch.softmax(_outputs(dirs, batch), -1)
    out = ensemble(dirs, weights=[3, 1, 1])(**batch)
    expected = (3 * probs[0] + probs[1] + probs[2]) / 5
    torch.testing.assert_close(out.exp(), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ensemble(dirs)(**batch).exp(), probs.mean(0), atol=1e-6, rtol=1e-5)


def test_vote_is_weighted_majority(dirs, sentences):
    batch = leanlm.load(dirs[0]).encode(sentences)
    logits = _outputs(dirs, batch)
    preds = logits.argmax(-1)  # (M, B)
    votes = torch.stack([(preds == c).float().sum(0) for c in range(2)], -1)  # (B, C)
    majority = votes.argmax(-1)
    out = ensemble(dirs, mode="vote")(**batch)
    assert torch.equal(out.argmax(-1), majority)
    torch.testing.assert_close(out.exp(), votes / 3, atol=1e-5, rtol=0)
    # member 0 weighted above the other two together: it decides alone
    assert torch.equal(ensemble(dirs, mode="vote", weights=[3, 1, 1])(**batch).argmax(-1), preds[0])
    # two members that disagree tie; the higher mean probability wins
    tie = ensemble(dirs[:2], mode="vote")(**batch).argmax(-1)
    assert torch.equal(tie, torch.softmax(logits[:2], -1).mean(0).argmax(-1))


def test_feature_extraction_mean_renormalises_embeddings(tmp_path, sentences):
    from leanlm.models.embed import embed

    for seed in (1, 2):
        tiny_encoder("feature-extraction", seed=seed).save(tmp_path / f"e{seed}")
    ens = ensemble([tmp_path / "e1", tmp_path / "e2"], output=tmp_path / "ens")
    a, b = embed(leanlm.load(tmp_path / "e1"), sentences), embed(leanlm.load(tmp_path / "e2"), sentences)
    expected = torch.nn.functional.normalize(torch.from_numpy(a + b), dim=1).numpy()
    got = embed(leanlm.load(tmp_path / "ens"), sentences)
    assert abs(got - expected).max() < 1e-5
    with pytest.raises(LeanlmError, match="only be averaged"):
        ensemble([tmp_path / "e1", tmp_path / "e2"], mode="vote")
    assert abs(embed(ens, sentences) - got).max() < 1e-6


# ----------------------------------------------------------------------------- members pinned by path and sha256

def test_members_referenced_relative_with_sha(dirs, tmp_path):
    out = dirs[0].parent / "ens-rel"
    ensemble(dirs[:2], output=out)
    refs = json.loads((out / "leanlm.json").read_text())["extra"]["composite"]["members"]
    assert [r["path"] for r in refs] == ["../m1", "../m2"]
    assert all(len(r["sha256"]) == 64 for r in refs)
    # moving the composite together with its members keeps it loadable
    moved = tmp_path / "moved"
    shutil.copytree(dirs[0].parent, moved)
    assert leanlm.load(moved / "ens-rel").runner.members[0].path.resolve() == (moved / "m1").resolve()


def _one_line_error(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("damage", ["rewrite-record", "delete"])
def test_changed_or_missing_member_is_refused(damage, tmp_path):
    for seed in (1, 2):
        tiny_encoder(seed=seed).save(tmp_path / f"m{seed}")
    ensemble([tmp_path / "m1", tmp_path / "m2"], output=tmp_path / "ens")
    if damage == "delete":
        shutil.rmtree(tmp_path / "m2")
    else:
        rec = json.loads((tmp_path / "m2" / "leanlm.json").read_text())
        rec["notes"].append("retrained")
        (tmp_path / "m2" / "leanlm.json").write_text(json.dumps(rec))
    with pytest.raises(ArtifactError) as e:
        leanlm.load(tmp_path / "ens")
    assert ("missing" if damage == "delete" else "changed") in _one_line_error(e)


def test_members_must_share_tokenizer_and_labels(dirs, tmp_path):
    other = tiny_encoder(seed=4)
    other.tokenizer = copy.deepcopy(other.tokenizer)
    other.tokenizer.add_tokens(["zzqxword"])
    other.save(tmp_path / "tok")
    with pytest.raises(ConfigError, match="tokenizer") as e:
        ensemble([dirs[0], tmp_path / "tok"])
    _one_line_error(e)
    tiny_encoder(labels=("bad", "good"), seed=5).save(tmp_path / "lab")
    with pytest.raises(ConfigError, match="label set") as e:
        ensemble([dirs[0], tmp_path / "lab"])
    _one_line_error(e)


def test_bad_inputs_are_one_line_errors(dirs, sentences):
    with pytest.raises(ConfigError, match="2 weights for 3 members"):
        ensemble(dirs, weights=[1, 2])
    with pytest.raises(ConfigError, match="positive"):
        EnsembleConfig(weights=(1.0, -1.0))
    with pytest.raises(ConfigError, match="at least two members"):
        ensemble(dirs[:1])
    with pytest.raises(ConfigError, match="save it first"):
        ensemble([tiny_encoder(seed=1), dirs[1]])
    changed = leanlm.load(dirs[0])
    changed.record.techniques.append({"type": "int8-dynamic"})
    with pytest.raises(ConfigError, match="changed since it was loaded"):
        ensemble([changed, dirs[1]])
    with pytest.raises(ConfigError, match="not a compose config"):
        compose(dirs, leanlm.config.lookup("quantize", "int8-dynamic")())
