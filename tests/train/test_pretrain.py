"""Encoder pre-training: masking and sentence-pair statistics, the objective contract, continued
pre-training, save -> load -> finetune, the CLI and its one-line errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from leanlm.errors import DataError
from leanlm.train.loop import LoopConfig
from leanlm.train.mlm import IGNORE, Mlm, MlmNsp, _build, _Collator, chunks, mask_tokens, nsp_pairs
from leanlm.train.tokenizer import train_tokenizer

DOCS = [
    "The film was a quiet triumph. The actors were great! Light fell on the set.",
    "Stocks fell after the report. The market closed lower. Traders were worried.",
    "今天天气很好。我们去公园散步。公园里有很多人。",
    "这部电影非常好看。演员的表演很自然！我还想再看一次。",
] * 6
TINY = dict(layers=1, hidden=32, heads=2, intermediate=64, max_position=64, seq_len=32, batch_size=8, eval_size=16)
QUICK = LoopConfig(epochs=2, max_steps=4, lr=1e-3, patience=0)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(DOCS, "wordpiece", vocab_size=200, min_frequency=1)


def test_masking_proportions_and_never_special_tokens():
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(10, 1000, size=(400, 64)))
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True
    special[:200, 40:] = True  # padding
    masked, labels = mask_tokens(ids, special, 0.15, mask_id=4, candidates=torch.arange(10, 1000), rng=rng)
    picked = labels != IGNORE
    assert not picked[special].any()
    assert (labels[picked] == ids[picked]).all()
    assert abs(picked.sum().item() / (~special).sum().item() - 0.15) < 0.01
    as_mask = (masked[picked] == 4).float().mean().item()
    kept = (masked[picked] == ids[picked]).float().mean().item()
    assert abs(as_mask - 0.8) < 0.03 and abs(kept - 0.1) < 0.03  # the rest (~10%) are random tokens
    assert (masked[~picked] == ids[~picked]).all()


def test_nsp_pairs_half_random_and_random_from_another_document():
    # document d's tokens are all 100*d + k: a token's document is readable from its value
    tokdocs = [[[100 * d + k for k in range(s * 5, s * 5 + 5)] for s in range(4)] for d in range(30)]
    pairs = nsp_pairs(tokdocs, chunks(tokdocs, 12), 12, np.random.default_rng(0))
    labels = np.array([lab for _, _, lab in pairs])
    assert len(pairs) > 50 and abs(labels.mean() - 0.5) < 0.15
    for a, b, lab in pairs:
        doc_a, docs_b = {t // 100 for t in a}, {t // 100 for t in b}
        assert len(doc_a) == 1 and len(docs_b) == 1 and len(a) + len(b) <= 12
        assert (docs_b != doc_a) if lab else (docs_b == doc_a and min(b) > max(a))
    with pytest.raises(DataError, match="at least 2 documents"):
        nsp_pairs(tokdocs[:1], chunks(tokdocs[:1], 12), 12, np.random.default_rng(0))


def test_nsp_length_does_not_tell_random_pairs_from_true_ones():
    # regression: random Bs were filled to the full sequence, so a pair's length alone gave 0.95
    # NSP accuracy on WikiText-2; now a random B has the length the true B would have had
    rng = np.random.default_rng(0)
    tokdocs = [[list(range(int(n))) for n in rng.integers(3, 15, size=int(rng.integers(2, 12)))] for _ in range(200)]
    pairs = nsp_pairs(tokdocs, chunks(tokdocs, 30), 30, np.random.default_rng(1))
    length = np.array([len(a) + len(b) for a, b, _ in pairs])
    labels = np.array([lab for _, _, lab in pairs])
    best_threshold = max(((length >= t) == labels).mean() for t in range(2, 31))
    assert best_threshold < 0.6 and abs(length[labels == 1].mean() - length[labels == 0].mean()) < 1.5


def test_collator_builds_bert_pairs(tok):
    batch = _Collator(tok, 0.15)([([7, 8, 9], [10, 11], 1), ([7], [8], 0)], np.random.default_rng(0))
    assert batch["token_type_ids"][0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    assert batch["next_sentence_label"].tolist() == [1, 0]
    assert ((batch["labels"] != IGNORE).sum(1) >= 1).all()


@pytest.mark.parametrize("config, task, head", [(MlmNsp(**TINY), "pretraining", "seq_relationship"),
                                                (Mlm(**TINY), "masked-lm", None)])
def test_objective_contract_pretrain_save_load_finetune(config, task, head, tmp_path):
    import leanlm
    from leanlm.data import TextDataset, make_splits
    from leanlm.train.finetune import FinetuneConfig, finetune
    from leanlm.train.pretrain import pretrain

    m = pretrain(config, DOCS, tmp_path / "enc", vocab_size=200, loop=QUICK)
    p = m.record.metrics["pretrain"]
    assert m.task == task and p["steps"] == 4 and np.isfinite(p["mlm_loss"]) and ("nsp_accuracy" in p) == config.nsp
    assert (head is not None) == hasattr(m.module.cls, "seq_relationship")
    again = leanlm.load(tmp_path / "enc")
    assert again.task == task and again.tokenizer.tokenize("今天") == ["今", "天"]
    assert again.record.data["vocab_size"] == len(again.tokenizer) == again.module.config.vocab_size
    splits = make_splits(TextDataset(DOCS * 2, [0, 1, 0, 1] * 12, ["neg", "pos"]))
    clf = finetune(tmp_path / "enc", splits, FinetuneConfig(loop=LoopConfig(epochs=1), batch_size=8), progress=False)
    assert clf.task == "sequence-classification" and 0 <= clf.record.metrics["test"]["accuracy"] <= 1


def test_continued_pretraining_adds_heads_and_keeps_the_encoder(tiny_emb):
    from leanlm.train.pretrain import pretrain

    for config in (Mlm(seq_len=32), MlmNsp(seq_len=32)):
        module, base = _build(config, tiny_emb.tokenizer, tiny_emb, seed=0)
        assert base == "tiny-bert" and hasattr(module.cls, "predictions")
        kept = {k: v for k, v in tiny_emb.module.state_dict().items() if not k.startswith("pooler.")}
        mine = module.base_model.state_dict()
        assert all(torch.equal(mine[k], v) for k, v in kept.items())
        assert module.cls.predictions.decoder.weight is module.base_model.embeddings.word_embeddings.weight
    m = pretrain(Mlm(seq_len=32, batch_size=8, eval_size=8), DOCS, None, loop=LoopConfig(max_steps=2), init=tiny_emb)
    assert m.task == "masked-lm" and m.record.data["tokenizer"] == "init model's"


def cli(*args):
    from leanlm.cli import main

    try:
        main(list(args))
    except SystemExit as e:
        return e.code
    return 0


TINY_FLAGS = ["--layers", "1", "--hidden", "32", "--heads", "2", "--intermediate", "64", "--max-position", "64",
              "--seq-len", "32", "--batch-size", "8", "--eval-size", "8", "--vocab-size", "150", "--max-steps", "2", "--epochs", "2"]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    for i, doc in enumerate(DOCS[:8]):
        (d / f"doc{i}.txt").write_text(doc, encoding="utf-8")
    return d


def test_cli_pretrain_and_tokenizer_happy_path(corpus_dir, tmp_path, capsys):
    from leanlm.artifact import read_record

    assert cli("pretrain", str(corpus_dir), str(tmp_path / "m"), *TINY_FLAGS, "--checkpoint-dir", str(tmp_path / "ck")) == 0
    assert "held-out MLM loss" in capsys.readouterr().out
    assert read_record(tmp_path / "m").metrics["pretrain"]["steps"] == 2
    assert cli("tokenizer", str(corpus_dir), str(tmp_path / "tok"), "--kind", "bpe", "--vocab-size", "300") == 0
    assert (tmp_path / "tok" / "tokenizer.json").exists()


def _error_cases(tmp_path, corpus_dir):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n ")
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\x89PNG\x00\x01\x02")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait. Une phrase.".encode("latin-1"))
    one = tmp_path / "one.txt"
    one.write_text("Only one document here. It has two sentences.")
    small_tok = tmp_path / "smalltok"
    train_tokenizer(DOCS, vocab_size=100, min_frequency=1).save_pretrained(small_tok)
    ck = tmp_path / "ck"
    assert cli("pretrain", str(corpus_dir), str(tmp_path / "first"), *TINY_FLAGS, "--checkpoint-dir", str(ck)) == 0
    return [
        ((str(empty), "no text"), ()),
        ((str(binary), "binary"), ()),
        ((str(latin), "not UTF-8"), ()),
        ((str(one), "at least 2 documents"), ()),
        ((str(corpus_dir), "vocabulary"), ("--objective", "mlm", "--init", "minilm-l6", "--tokenizer", str(small_tok))),
        ((str(corpus_dir), "another pre-training run"), ("--objective", "mlm", "--checkpoint-dir", str(ck))),
    ]


def test_cli_errors_are_one_line_exit_2_and_write_nothing(corpus_dir, tmp_path, capsys):
    cases = _error_cases(tmp_path, corpus_dir)
    capsys.readouterr()
    for i, ((corpus, needle), extra) in enumerate(cases):
        out = tmp_path / f"out{i}"
        assert cli("pretrain", corpus, str(out), *TINY_FLAGS, *extra) == 2, needle
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
        assert not out.exists() and not list(tmp_path.glob(f".out{i}.tmp-*"))
