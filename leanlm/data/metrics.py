"""Task metrics that several floors need (compression calibrates on them, bench reports them).

They live here, below `compress/` and `bench/`, so neither imports the other for them.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any, Sequence

import numpy as np

from leanlm.artifact import LeanModel
from leanlm.errors import DataError


def label_map(model: LeanModel, label_names: Sequence[str]) -> list[int] | None:
    """Map model class ids to dataset label ids (by name when the names match in another order)."""
    labels = model.labels
    if not labels:
        return None
    if len(labels) != len(label_names):
        raise DataError(f"model has {len(labels)} labels {list(labels)} but the data has {len(label_names)} "
                        f"{list(label_names)}")
    if list(labels) != list(label_names) and set(labels) == set(label_names):
        return [list(label_names).index(l) for l in labels]
    return None


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int) -> dict[str, Any]:
    """accuracy, macro F1 (over classes seen in truth or predictions), n and the confusion matrix."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if len(t) == 0 or len(t) != len(p):
        raise DataError(f"need equally many labels and predictions (got {len(t)} and {len(p)})")
    k = max(num_labels, int(t.max()) + 1, int(p.max()) + 1)
    conf = np.zeros((k, k), dtype=np.int64)
    np.add.at(conf, (t, p), 1)
    f1s = []
    for c in range(k):
        tp, fp, fn = conf[c, c], conf[:, c].sum() - conf[c, c], conf[c, :].sum() - conf[c, c]
        if tp + fp + fn == 0:
            continue  # class absent from truth and predictions
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": float((t == p).mean()), "macro_f1": float(np.mean(f1s)), "n": int(len(t)),
            "confusion": conf.tolist()}


# ----------------------------------------------------------------------------- SQuAD answers
# The official SQuAD v1.1 evaluation script's rules, so EM/F1 here compare with published numbers.

_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD's normalization: lower case, no punctuation, no articles, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1_score(prediction: str, truth: str) -> float:
    """Token-overlap F1 of two answers after `normalize_answer` (0..1)."""
    p, t = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = Counter(p) & Counter(t)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(t)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, truth: str) -> float:
    """1.0 if the answers are equal after `normalize_answer`, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(truth))


def squad_metrics(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Exact match and F1 in percent, each question scored against its best-matching gold answer.

    Returns {"exact_match", "f1", "n"}.
    """
    if len(predictions) == 0 or len(predictions) != len(answers):
        raise DataError(f"need equally many predictions and answer lists (got {len(predictions)} and {len(answers)})")
    if any(not golds for golds in answers):
        raise DataError("every question needs at least one gold answer")
    em = [max(exact_match(p, a) for a in golds) for p, golds in zip(predictions, answers)]
    f1 = [max(f1_score(p, a) for a in golds) for p, golds in zip(predictions, answers)]
    return {"exact_match": 100 * float(np.mean(em)), "f1": 100 * float(np.mean(f1)), "n": len(em)}
