"""evaluate / agreement / embedding_fidelity on tiny real models (hand-checked numbers)."""
from __future__ import annotations

import pytest

from leanlm.bench.evaluate import agreement, classification_metrics, embedding_fidelity, evaluate
from leanlm.data import TextDataset
from leanlm.errors import DataError, LeanlmError, UnsupportedError


@pytest.fixture(scope="module")
def small_data(sentences_module):
    labels = [1, 0, 1, 0, 0, 0, 1, 0]
    return TextDataset(sentences_module, labels, ["negative", "positive"], "hand")


@pytest.fixture(scope="module")
def sentences_module():
    return [
        "A gorgeous, witty, seductive movie.", "The plot is a mess and the acting is worse.",
        "It's a charming and often affecting journey.", "Dull, lifeless and far too long.",
        "Stocks fell sharply after the earnings report.", "The customer asked how to reset a password.",
        "An utterly delightful film from start to finish.", "I wanted to walk out after twenty minutes.",
    ]


def test_classification_metrics_by_hand():
    m = classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], 2)
    assert m["accuracy"] == 0.75 and m["n"] == 4
    assert m["confusion"] == [[1, 1], [0, 2]]
    # F1 class 0 = 2/3, class 1 = 4/5
    assert m["macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)


def test_evaluate_matches_hand_count(tiny_clf, small_data):
    preds = tiny_clf.predict(small_data.texts, batch_size=3)
    correct = sum(int(p == y) for p, y in zip(preds, small_data.labels))
    res = evaluate(tiny_clf, small_data, batch_size=3)
    assert res["n"] == len(small_data)
    assert res["accuracy"] == pytest.approx(correct / len(small_data))
    assert sum(map(sum, res["confusion"])) == len(small_data)
    assert sum(res["confusion"][i][i] for i in range(2)) == correct
    assert 0.0 <= res["macro_f1"] <= 1.0
    assert evaluate(tiny_clf, small_data, batch_size=5) == res  # deterministic, batch-size independent


def test_evaluate_dataset_name_uses_test_split(tiny_clf):
    from leanlm.data import load_splits

    test = load_splits("movie-snippets", seed=0).test.head(40)
    preds = tiny_clf.predict(test.texts)
    res = evaluate(tiny_clf, "movie-snippets", limit=40)
    assert res["n"] == 40
    assert res["accuracy"] == pytest.approx(sum(p == y for p, y in zip(preds, test.labels)) / 40)


def test_evaluate_maps_labels_by_name(tiny_clf, small_data):
    flipped = TextDataset(small_data.texts, [1 - y for y in small_data.labels], ["positive", "negative"], "flip")
    assert evaluate(tiny_clf, flipped)["accuracy"] == pytest.approx(evaluate(tiny_clf, small_data)["accuracy"])


def test_evaluate_rejects_wrong_inputs(tiny_clf, tiny_emb, tiny_lm, small_data):
    three = TextDataset(small_data.texts, [0, 1, 2] * 2 + [0, 1], ["a", "b", "c"], "three")
    with pytest.raises(DataError, match="labels"):
        evaluate(tiny_clf, three)
    with pytest.raises(LeanlmError, match="leanlm.bench.lm"):
        evaluate(tiny_lm, small_data)
    with pytest.raises(UnsupportedError, match="embedding_fidelity"):
        evaluate(tiny_emb, small_data)
    with pytest.raises(LeanlmError, match="batch_size"):
        evaluate(tiny_clf, small_data, batch_size=0)
    with pytest.raises(DataError, match="unknown dataset"):
        evaluate(tiny_clf, "no-such-dataset")


def test_agreement(tiny_clf, sentences_module):
    from leanlm.models.tiny import tiny_encoder

    assert agreement(tiny_clf, tiny_clf, sentences_module) == 1.0
    other = tiny_encoder("sequence-classification", seed=3)
    a = agreement(tiny_clf, other, sentences_module)
    assert 0.0 <= a <= 1.0
    assert a == pytest.approx(sum(x == y for x, y in zip(tiny_clf.predict(sentences_module),
                                                             other.predict(sentences_module))) / 8)


def test_embedding_fidelity(tiny_emb, sentences_module):
    from leanlm.compress.quantize import quantize
    from leanlm.compress.quantize.int8_dynamic import Int8Dynamic

    same = embedding_fidelity(tiny_emb, tiny_emb, sentences_module, batch_size=3)
    assert same["n"] == 8
    assert same["mean_cosine"] == pytest.approx(1.0, abs=1e-5) and same["min_cosine"] > 0.9999
    q = embedding_fidelity(tiny_emb, quantize(tiny_emb, Int8Dynamic()), sentences_module)
    assert 0.95 < q["min_cosine"] <= q["mean_cosine"] <= 1.0 + 1e-6
