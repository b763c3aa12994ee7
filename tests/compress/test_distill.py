"""Knowledge distillation on tiny real models and real movie-snippets texts (seconds per test)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import leanlm
from leanlm.compress.distill import (DistillConfig, _ensemble_probs, default_relation_heads, distill, recipe_step,
                                     relation_kl, student_from_teacher, uniform_layer_map)
from leanlm.compress._students import unlabeled_texts
from leanlm.config import config_from_dict, transform_for
from leanlm.data import load_splits, make_splits
from leanlm.errors import ArtifactError, ConfigError, DataError, LeanlmError, UnsupportedError
from leanlm.models.tiny import tiny_encoder
from leanlm.train.finetune import FinetuneConfig, finetune
from leanlm.train.loop import LoopConfig


@pytest.fixture(autouse=True)
def one_thread():
    # tiny matrices: one thread is faster than two, and the CPU is shared
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def splits():
    """1,500 real movie snippets cut into train/validation/test (1200/150/150)."""
    return make_splits(load_splits("movie-snippets").train.head(1500), seed=0, validation=0.1, test=0.1)


@pytest.fixture(scope="module")
def teacher(splits):
    """A tiny classifier fine-tuned on real snippets (~68% accurate, both classes predicted): worth imitating."""
    torch.set_num_threads(1)
    cfg = FinetuneConfig(loop=LoopConfig(epochs=3, lr=1e-3, warmup_ratio=0.1, patience=0), batch_size=32)
    return finetune(tiny_encoder(layers=2, hidden=64, seed=0), splits, cfg, progress=False)


def _agree(a, b, texts):
    return float(np.mean(np.array(a.predict(texts)) == np.array(b.predict(texts))))


def _cfg(epochs=3, train_size=200, **kw):
    loop = LoopConfig(epochs=epochs, lr=3e-3, warmup_ratio=0.0, patience=0, eval_every=10)
    return DistillConfig(loop=loop, batch_size=16, train_size=train_size, **kw)


def _losses(model):
    return [h["loss"] for h in model.record.training["result"]["history"]]


# ----------------------------------------------------------------------------- config and pieces

@pytest.mark.parametrize("bad", [dict(temperature=0), dict(alpha=1.5), dict(hidden_weight=-1),
                                 dict(embedding_loss="l1"), dict(attention_layers=0), dict(batch_size=0),
                                 dict(layer_map=(-1,)), dict(unlabeled_size=-1)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ConfigError):
        DistillConfig(**bad)


def test_config_round_trips_and_has_a_transform():
    cfg = _cfg(alpha=0.7, unlabeled=("imdb", "tweets"), layer_map=(0, 2))
    again = config_from_dict(json.loads(cfg.to_json()))
    assert again == cfg and again.loop.lr == 3e-3 and again.unlabeled == ("imdb", "tweets")
    assert transform_for(cfg) is recipe_step


def test_relation_loss_compares_different_head_counts():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    t, s = torch.randn(2, 4, 64), torch.randn(2, 4, 32)  # 4 teacher heads x 16, 2 student heads x 16
    r = default_relation_heads(64, 32, teacher_heads=4)
    assert r == 4
    assert relation_kl(t, t, mask, r).abs() < 1e-6
    loss = relation_kl(t, s, mask, r)
    assert torch.isfinite(loss) and loss > 0
    s2 = s.clone()
    s2[0, 3] += 100.0  # a padded position changes nothing
    assert torch.allclose(relation_kl(t, s2, mask, r), loss)


def test_uniform_layer_map_and_ensemble_average():
    assert uniform_layer_map(3, 6) == [1, 3, 5] and uniform_layer_map(2, 2) == [0, 1]
    a, b = torch.tensor([[4.0, 0.0]]), torch.tensor([[0.0, 4.0]])
    assert torch.allclose(_ensemble_probs([a, b], 2.0), torch.tensor([[0.5, 0.5]]))


def test_unlabeled_texts_split_sample_and_exclude(tmp_path):
    f = tmp_path / "reviews.txt"
    f.write_text("A long review. It has three sentences in it! Was it good? Yes it was.\n\n"
                 "Held out sentence is here.\nshort\n")
    texts, counts = unlabeled_texts([str(f)], 0, True, seed=0, exclude={"Held out sentence is here."})
    assert sorted(texts) == sorted(["It has three sentences in it!", "Yes it was.", "Was it good?"] +
                                   ["A long review."]) and counts == {str(f): 4}
    whole, _ = unlabeled_texts([str(f)], 2, False, seed=0)
    assert len(whole) == 2
    tweets, counts = unlabeled_texts(["tweets"], 50, True, seed=0)
    assert len(tweets) == 50 and counts == {"tweets": 50}


def test_a_text_corpus_is_an_unlabeled_source_in_plain_text():
    wiki, counts = unlabeled_texts(["wikitext-2"], 200, True, seed=0)
    assert counts == {"wikitext-2": 200} and len(set(wiki)) == 200
    assert not any("@-@" in t or " , " in t or t.startswith("=") for t in wiki)  # WikiText's tokenisation undone


# ----------------------------------------------------------------------------- distillation runs

def test_kd_loss_falls_and_agreement_rises(teacher, splits):
    student = tiny_encoder(layers=1, hidden=64, heads=2, seed=3)
    before = _agree(teacher, student, splits.validation.texts)
    out = distill(teacher, student, splits, _cfg(alpha=1.0, train_size=800), progress=False)
    losses = _losses(out)
    assert losses[-1] < 0.6 * losses[0]
    assert _agree(teacher, out, splits.validation.texts) > before + 0.15
    assert out.record.metrics["validation"]["agreement"] > before + 0.15
    rec = out.record
    assert rec.techniques[-1]["type"] == "distill" and rec.extra["distill"]["cached_targets"]
    assert rec.extra["distill"]["teachers"][0]["base_model"] == "tiny-bert"
    test = rec.metrics["test"]
    assert {"accuracy", "agreement", "teacher_accuracy", "n"} <= set(test) and test["n"] == len(splits.test)
    assert rec.metrics["validation"]["accuracy"] == rec.training["result"]["best_score"]
    assert rec.data["dataset"] == splits.name and rec.training["config"]["alpha"] == 1.0


def test_hidden_and_attention_losses_across_widths(teacher, splits):
    student = tiny_encoder(layers=1, hidden=32, heads=2, seed=3)
    out = distill(teacher, student, splits, _cfg(epochs=2, hidden_weight=1.0, attention_weight=1.0, attention_layers=2),
                  progress=False)
    extra = out.record.extra["distill"]
    assert extra["projected"] and extra["relation_heads"] == [4] and extra["layer_map"] == [1]
    assert not extra["cached_targets"]
    losses = _losses(out)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert not hasattr(out.module, "proj")  # the projection trained beside the student is not part of it


def test_pruned_student_distills_and_round_trips(teacher, splits, tmp_path):
    # a structurally pruned copy: layer 0 keeps 2 of 4 heads and half its FFN; widths differ from config
    student = student_from_teacher(teacher, [0, 1])
    att = student.module.bert.encoder.layer[0].attention
    att.self.query, att.self.key, att.self.value = (torch.nn.Linear(64, 32) for _ in range(3))
    att.self.num_attention_heads, att.self.all_head_size = 2, 32
    att.output.dense = torch.nn.Linear(32, 64)
    ffn = student.module.bert.encoder.layer[0]
    ffn.intermediate.dense, ffn.output.dense = torch.nn.Linear(64, 128), torch.nn.Linear(128, 64)
    out = distill(teacher, student, splits, _cfg(epochs=1, attention_weight=1.0, attention_layers=2, hidden_weight=0.5),
                  output=tmp_path / "student", progress=False)
    assert out.record.extra["distill"]["layer_map"] == [0, 1]  # the kept layers meet their originals
    back = leanlm.load(tmp_path / "student")
    assert back.module.bert.encoder.layer[0].attention.self.query.out_features == 32
    batch = back.encode(splits.test.texts[:8])
    assert torch.allclose(back(**batch), out(**batch), atol=1e-5)
    assert back.record.metrics == json.loads(json.dumps(out.record.metrics))
    assert back.record.techniques[-1]["type"] == "distill"


def test_ensemble_of_two_teachers(teacher, splits):
    other = student_from_teacher(teacher, [1])
    student = student_from_teacher(teacher, [0])
    out = distill([teacher, other], student, splits, _cfg(epochs=1, hidden_weight=0.5), progress=False)
    assert len(out.record.extra["distill"]["teachers"]) == 2
    assert np.isfinite(_losses(out)).all() and 0.0 <= out.record.metrics["test"]["agreement"] <= 1.0


def test_embedding_distillation_raises_cosine(splits):
    from leanlm.bench.evaluate import embedding_fidelity

    teacher = tiny_encoder("feature-extraction", layers=2, hidden=64, seed=0)
    student = tiny_encoder("feature-extraction", layers=1, hidden=64, seed=7)
    before = embedding_fidelity(teacher, student, splits.validation.texts)["mean_cosine"]
    for loss in ("cosine", "mse"):
        out = distill(teacher, student, splits, _cfg(epochs=2, train_size=300, embedding_loss=loss), progress=False)
        after = out.record.metrics["validation"]["cosine"]
        assert after > before + 0.05, (loss, before, after)
        assert out.record.metrics["test"]["cosine"] > before


def test_unlabeled_only_and_recipe_step(teacher, splits, tmp_path):
    f = tmp_path / "texts.txt"
    f.write_text("\n".join(splits.train.texts[:120]))
    out = distill(teacher, student_from_teacher(teacher, [0]), None, _cfg(epochs=1, unlabeled=(str(f),), split_sentences=False),
                  progress=False)
    assert "agreement" in out.record.metrics["validation"] and "test" not in out.record.metrics
    assert out.record.data["unlabeled"]["sources"] == {str(f): 120}
    step = recipe_step(student_from_teacher(teacher, [1]), _cfg(epochs=1), teacher=teacher, splits=None,
                       calibration=splits.train.texts[:60], labels=None)
    assert step.record.techniques[-1]["type"] == "distill" and step.record.data["unlabeled"]["texts"] == 54


def test_labelled_plus_unlabeled(teacher, splits):
    cfg = _cfg(epochs=1, unlabeled=("tweets",), unlabeled_size=40, train_size=100)
    out = distill(teacher, student_from_teacher(teacher, [0]), splits, cfg, progress=False)
    assert out.record.data["unlabeled"] == {"sources": {"tweets": 40}, "texts": 40}
    assert out.record.data["train_used"] == 100


# ----------------------------------------------------------------------------- errors

def _other_vocab(tiny_lm):
    student = tiny_encoder(seed=1)
    student.tokenizer = tiny_lm.tokenizer
    return student


@pytest.mark.parametrize("case,error,needle", [
    ("tokenizer", UnsupportedError, "different tokenizers"),
    ("labels", UnsupportedError, "labels"),
    ("decoder", UnsupportedError, "decoder"),
    ("empty", DataError, "has no texts"),
    ("layers", ConfigError, "distinct indices"),
])
def test_errors_are_one_line_and_write_nothing(case, error, needle, teacher, splits, tiny_lm, tmp_path):
    out = tmp_path / "out"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    args = {
        "tokenizer": (teacher, _other_vocab(tiny_lm), _cfg(epochs=1)),
        "labels": (teacher, tiny_encoder(labels=("a", "b", "c")), _cfg(epochs=1)),
        "decoder": (tiny_lm, tiny_encoder(), _cfg(epochs=1)),
        "empty": (teacher, "layers:0", _cfg(epochs=1, unlabeled=(str(empty),))),
        "layers": (teacher, "layers:0,7", _cfg(epochs=1)),
    }[case]
    with pytest.raises(error) as e:
        distill(args[0], args[1], splits, args[2], output=out, progress=False)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt"]


def test_existing_output_is_refused_before_training(teacher, splits, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(ArtifactError):
        distill(teacher, "layers:0", splits, _cfg(), output=tmp_path / "out", progress=False)


# ----------------------------------------------------------------------------- CLI

def _cli(*args, cwd):
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(leanlm.__file__).resolve().parents[1])}  # this checkout's leanlm
    return subprocess.run([sys.executable, "-m", "leanlm.cli", "distill", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_cli_end_to_end(teacher, splits, tmp_path):
    teacher.save(tmp_path / "teacher")
    data = tmp_path / "snippets.csv"
    import csv

    with open(data, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        for t, l in zip(splits.train.texts[:150], splits.train.labels[:150]):
            w.writerow([t, splits.label_names[l]])
    r = _cli(str(tmp_path / "teacher"), str(tmp_path / "student"), "--student", "layers:1", "--dataset", str(data),
             "--epochs", "1", "--lr", "1e-3", "--temperature", "3", "--hidden-weight", "0.5", "--batch-size", "16",
             "--seed", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "test_agreement" in r.stdout
    rec = json.loads((tmp_path / "student" / "leanlm.json").read_text())
    tech = rec["techniques"][-1]
    assert tech["type"] == "distill" and tech["temperature"] == 3.0 and tech["loop"]["epochs"] == 1
    assert tech["seed"] == 1 and tech["loop"]["seed"] == 1 and rec["extra"]["distill"]["student"] == "layers:1"
    bad = _cli(str(tmp_path / "teacher"), str(tmp_path / "again"), "--student", "layers:0", "--dataset", str(data),
               "--unlabeled", str(tmp_path / "missing.txt"), cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "does not exist" in bad.stderr
    assert not (tmp_path / "again").exists()
    unknown = _cli(str(tmp_path / "teacher"), str(tmp_path / "again"), "--temprature", "2", cwd=tmp_path)
    assert unknown.returncode == 2 and "--temperature" in unknown.stderr


@pytest.mark.integration
def test_minilm_l3_student_of_a_classifier_and_of_minilm_l6(teacher, splits, minilm):
    cfg = DistillConfig(loop=LoopConfig(epochs=1, lr=5e-5, patience=0), batch_size=16, train_size=64, eval_size=32)
    clf = distill(teacher, "minilm-l3", splits, cfg, progress=False)  # a fresh, seeded head with the teacher's labels
    assert clf.labels == teacher.labels and clf.module.config.num_hidden_layers == 3
    assert clf.record.base_model == "minilm-l3" and clf.record.extra["distill"]["student"] == "minilm-l3"
    from leanlm.bench.evaluate import embedding_fidelity

    before = embedding_fidelity(minilm, leanlm.load("minilm-l3"), splits.test.texts)["mean_cosine"]
    cfg = DistillConfig(loop=LoopConfig(epochs=1, lr=2e-4, patience=0), batch_size=16, train_size=128, eval_size=32)
    emb = distill(minilm, "minilm-l3", splits, cfg, progress=False)
    assert emb.task == "feature-extraction" and emb.record.metrics["test"]["cosine"] > before + 0.05
