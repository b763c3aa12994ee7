"""SQuAD data: the loader, the by-article split, the registry entry, training labels and EM/F1 rules."""
from __future__ import annotations

import json
import shutil

import pytest

from leanlm.data import load_splits
from leanlm.data.metrics import exact_match, f1_score, normalize_answer, squad_metrics
from leanlm.data.qa import train_features, windows
from leanlm.data.squad import BIGBENCH, SQUAD_MEMBER, QAExample, Answer, parse_squad, read_squad, split_by_article
from leanlm.errors import DataError


def _titles(ds):
    return {e.title for e in ds.examples}


def test_split_is_by_article_deterministic_and_complete(squad_path):
    data = read_squad(squad_path)
    assert len(data) == 10565 and len(data.titles) == 48
    s = load_splits(str(squad_path), seed=0)
    parts = [_titles(s.train), _titles(s.validation), _titles(s.test)]
    assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert len(s.train) + len(s.validation) + len(s.test) == len(data)
    d = s.describe()
    assert (d["train_articles"], d["validation_articles"], d["test_articles"]) == (38, 5, 5)
    again = load_splits(str(squad_path), seed=0)
    assert [e.id for e in again.test.examples] == [e.id for e in s.test.examples]
    assert _titles(load_splits(str(squad_path), seed=1).test) != parts[2]
    for e in s.test.examples[:200]:  # every kept answer points at its text
        assert all(e.context[a.start:a.end] == a.text for a in e.answers)


def test_registry_squad_reads_the_bigbench_member(squad_path, tmp_path, monkeypatch):
    # where read_member caches the extracted member: no 358 MB fetch in tests
    monkeypatch.setenv("LEANLM_CACHE", str(tmp_path))
    cached = tmp_path / "data" / f"{BIGBENCH[0]}-{BIGBENCH[1]}" / SQUAD_MEMBER
    cached.parent.mkdir(parents=True)
    shutil.copyfile(squad_path, cached)
    s = load_splits("squad", seed=0)
    local = load_splits(str(squad_path), seed=0)
    assert [e.id for e in s.test.examples] == [e.id for e in local.test.examples]
    assert s.name == "squad" and "bigbench==1.0.0" in s.describe()["source"]


def _doc(articles):
    return json.dumps({"version": "1.1", "data": [
        {"title": t, "paragraphs": [{"context": c, "qas": [
            {"id": f"{t}-{i}", "question": q, "answers": [{"text": a, "answer_start": st}]}
            for i, (q, a, st) in enumerate(qas)]}]} for t, c, qas in articles]})


def test_parse_repairs_offsets_and_refuses_garbage(tmp_path):
    ctx = "The cat sat on the mat. The dog sat too."
    data = parse_squad(_doc([("a", ctx, [("Who sat?", "The dog", 3), ("Where?", "the moon", 0)])]))
    (e,) = data.examples  # a wrong answer_start is moved to the text; an absent answer drops the question
    assert e.answers[0] == Answer("The dog", 24) and ctx[24:31] == "The dog"
    with pytest.raises(DataError, match="not a SQuAD JSON"):
        parse_squad('{"data": [{"title": "x"}]}')
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": [], "version": "1"}')
    with pytest.raises(DataError, match="no answerable"):
        read_squad(bad)
    three = [(t, ctx, [("Who sat?", "The cat", 0)]) for t in "abc"]
    with pytest.raises(DataError, match="at least 3"):
        split_by_article(parse_squad(_doc(three[:2])))
    assert len(split_by_article(parse_squad(_doc(three))).test) == 1


@pytest.mark.parametrize("pred, truth, em, f1", [
    ("The Denver Broncos", "Denver Broncos", 1.0, 1.0),       # articles dropped
    ("denver broncos!", "Denver  Broncos", 1.0, 1.0),          # case, punctuation, spaces
    ("Broncos", "Denver Broncos", 0.0, 2 / 3),                 # P=1, R=1/2
    ("the Carolina Panthers", "Denver Broncos", 0.0, 0.0),
    ("a", "the", 1.0, 0.0),                                    # both normalise to "" -> EM, no tokens -> F1 0
    ("1,000 years", "1000 years", 1.0, 1.0),                   # punctuation inside numbers goes too
])
def test_official_normalisation(pred, truth, em, f1):
    assert exact_match(pred, truth) == em
    assert f1_score(pred, truth) == pytest.approx(f1)


def test_squad_metrics_take_the_best_gold_and_bench_lm_reexports():
    import leanlm.bench.lm as lm

    assert lm.normalize_answer is normalize_answer and lm.f1_score is f1_score and lm.exact_match is exact_match
    res = squad_metrics(["Denver Broncos", "Broncos"], [["Broncos", "Denver Broncos"], ["Denver Broncos"]])
    assert res["exact_match"] == 50.0 and res["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2) and res["n"] == 2
    with pytest.raises(DataError):
        squad_metrics(["x"], [])


def test_window_labels_hold_the_answer_or_point_at_cls(tiny_qa):
    tok = tiny_qa.tokenizer
    filler = " ".join(f"Sentence number {i} says nothing at all." for i in range(12))
    ctx = filler + " The treasure is buried under the old oak tree. " + filler
    start = ctx.index("under the old oak tree")
    ex = QAExample("q1", "Where is the treasure?", ctx, (Answer("under the old oak tree", start),))
    feats = train_features(tok, [ex], max_length=64, stride=16)
    assert len(feats) > 3 and all(f["example"] == 0 for f in feats)
    w = windows(tok, ex.question, ctx, 64, stride=16)  # inference windows are the same windows
    assert [f["input_ids"] for f in feats] == w.features["input_ids"]
    with_answer = [(f, k) for k, f in enumerate(feats) if f["start_positions"] > 0]
    assert with_answer and len(with_answer) < len(feats)
    for f, k in with_answer:
        s, e = w.offsets[k][f["start_positions"]][0], w.offsets[k][f["end_positions"]][1]
        assert ctx[s:e] == "under the old oak tree" and w.in_context[k][f["start_positions"]]
    for f in feats:
        if f["start_positions"] == 0:
            assert f["end_positions"] == 0  # [CLS]: no answer in this window
