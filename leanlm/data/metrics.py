"""Task metrics that several floors need (compression calibrates on them, bench reports them).

They live here, below `compress/` and `bench/`, so neither imports the other for them.
"""
from __future__ import annotations

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
