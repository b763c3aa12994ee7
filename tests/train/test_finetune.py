from dataclasses import replace

import pytest
import torch

import leanlm
from leanlm.artifact import read_record
from leanlm.data import TextDataset, make_splits
from leanlm.errors import ConfigError, LeanlmError
from leanlm.train.finetune import FinetuneConfig, _batches, finetune
from leanlm.train.loop import LoopConfig, train_loop


def _toy_splits():
    pos = ["great fun", "loved it", "wonderful film", "a delight", "superb acting", "really good"]
    neg = ["awful mess", "hated it", "boring film", "a disaster", "terrible acting", "really bad"]
    texts = [t for p, n in zip(pos, neg) for t in (p, n)] * 4
    labels = [l for _ in range(len(pos)) for l in (1, 0)] * 4
    return make_splits(TextDataset(texts, labels, ["negative", "positive"], "toy"), seed=0, validation=0.2, test=0.2)


def test_finetune_tiny_learns_and_saves(tiny_clf, tmp_path):
    model = tiny_clf.clone()
    cfg = FinetuneConfig(loop=LoopConfig(epochs=15, lr=3e-3, warmup_ratio=0.0, patience=0), batch_size=8)
    out = finetune(model, _toy_splits(), cfg, output=tmp_path / "ft", progress=False)
    assert out.record.metrics["validation"]["accuracy"] >= 0.8
    rec = read_record(tmp_path / "ft")
    assert rec.data["dataset"] == "toy" and rec.data["seed"] == 0
    assert rec.training["config"]["loop"]["epochs"] == 15
    assert rec.metrics["test"]["accuracy"] == out.record.metrics["test"]["accuracy"]


def test_same_seed_same_model_from_a_base_directory(tmp_path):
    # a fresh classification head is built from the base model: its random init follows the seed too
    from leanlm.models.tiny import tiny_encoder

    tiny = tiny_encoder("feature-extraction")
    base = tmp_path / "base"  # a plain Hugging Face directory, as a user would bring
    tiny.module.save_pretrained(base)
    tiny.tokenizer.save_pretrained(base)
    cfg = FinetuneConfig(loop=LoopConfig(epochs=1, lr=1e-3, warmup_ratio=0.0, patience=0), batch_size=8)
    a, b = (finetune(str(base), _toy_splits(), cfg, progress=False) for _ in range(2))
    for (name, pa), pb in zip(a.module.state_dict().items(), b.module.state_dict().values()):
        assert torch.equal(pa, pb), name


def _scored_linear_run(scores: list[float], config: LoopConfig):
    """Train a 2->1 linear layer one step per epoch; validation returns `scores` in turn.
    Returns the layer, the loop's result and the weights seen at each validation."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(2, 1)
    it, snapshots = iter(scores), []

    def evaluate(m):
        snapshots.append(m.weight.detach().clone())
        return next(it)

    x = torch.randn(16, 2)
    res = train_loop(lin, lambda e: [{"x": x}], 1, lambda m, b: (m(b["x"]) ** 2).mean(), evaluate, config,
                     progress=False)
    return lin, res, snapshots


def test_loop_restores_best_weights_and_stops_early():
    lin, res, snapshots = _scored_linear_run([0.5, 0.9, 0.1, 0.1, 0.1, 0.1],
                                             LoopConfig(epochs=6, lr=0.1, patience=2, warmup_ratio=0.0))
    assert res.stopped_early and res.best_step == 2 and res.steps == 4
    assert torch.equal(lin.weight, snapshots[1])


def test_bad_configs():
    with pytest.raises(ConfigError):
        LoopConfig(lr=0)
    with pytest.raises(ConfigError):
        FinetuneConfig(batch_size=0)


def test_refuses_existing_output_before_training(tiny_clf, tmp_path):
    (tmp_path / "ft").mkdir()
    with pytest.raises(LeanlmError, match="already exists"):
        finetune(tiny_clf.clone(), _toy_splits(), output=tmp_path / "ft")


@pytest.mark.integration
def test_real_minilm_finetune_small_subset(tmp_path):
    # A smoke run on real data (the accuracy target is checked by `make demo`, which trains fully).
    cfg = FinetuneConfig(loop=LoopConfig(epochs=1, lr=1e-4), train_size=96, eval_size=64, batch_size=32)
    m = finetune("minilm-l6", "movie-snippets", cfg, output=tmp_path / "ft", progress=False)
    assert 0.0 <= m.record.metrics["validation"]["accuracy"] <= 1.0
    assert m.record.training["result"]["steps"] == 3 and m.record.data["train_used"] == 96
    back = leanlm.load(tmp_path / "ft")
    texts = ["a warm, funny and moving film", "a dull, pointless waste of time"]
    assert back.predict(texts) == m.predict(texts)


def test_finetune_defaults_end_on_the_last_annealed_weights():
    # issue 13: a mid-schedule "best" checkpoint picked on the small validation split transfers worse
    loop = FinetuneConfig().loop
    assert loop.restore_best is False and loop.patience == 0
    lin, res, snapshots = _scored_linear_run([0.5, 0.9, 0.1, 0.1], replace(loop, epochs=4, lr=0.1, warmup_ratio=0.0))
    assert res.steps == 4 and res.best_step == 2 and not res.stopped_early
    assert torch.equal(lin.weight, snapshots[-1]) and not torch.equal(lin.weight, snapshots[1])


@pytest.mark.parametrize("window", [0, 2])
def test_batch_order_covers_every_example_once(tiny_clf, window):
    texts = [("word " * (i % 7 + 1)).strip() for i in range(40)]
    data = TextDataset(texts, [i % 2 for i in range(40)], ["negative", "positive"], "lengths")
    batches = list(_batches(tiny_clf, data, 4, 32, seed=1, shuffle=True, bucket_window=window))
    assert sum(len(b["labels"]) for b in batches) == 40
    padded = sum(b["input_ids"].numel() for b in batches)
    uniform = sum(b["input_ids"].numel() for b in _batches(tiny_clf, data, 4, 32, seed=1, shuffle=True))
    assert (padded < uniform) if window else (padded == uniform)  # bucketing pads less; 0 is the uniform order
