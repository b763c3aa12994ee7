"""Text classification datasets and deterministic train/validation/test splits."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from leanlm.errors import DataError


@dataclass
class TextDataset:
    """Texts with integer labels; `label_names[i]` names label i."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]
    name: str = "data"

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise DataError(f"{self.name}: {len(self.texts)} texts but {len(self.labels)} labels")
        if not self.texts:
            raise DataError(f"{self.name}: no examples")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: Sequence[int], name: str | None = None) -> "TextDataset":
        return TextDataset([self.texts[i] for i in idx], [self.labels[i] for i in idx], self.label_names,
                           name or self.name)

    def head(self, n: int) -> "TextDataset":
        return self.subset(range(min(n, len(self))))


@dataclass
class Splits:
    train: TextDataset
    validation: TextDataset
    test: TextDataset
    seed: int
    name: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def label_names(self) -> list[str]:
        return self.train.label_names

    def describe(self) -> dict[str, Any]:
        """What goes into leanlm.json: enough to rebuild the exact same splits."""
        return {"dataset": self.name, "seed": self.seed, "train": len(self.train),
                "validation": len(self.validation), "test": len(self.test),
                "labels": self.label_names, **self.info}


def make_splits(
    data: TextDataset,
    seed: int = 0,
    validation: float = 0.1,
    test: float = 0.1,
    fixed_test: TextDataset | None = None,
) -> Splits:
    """Shuffle with `seed` and cut into train/validation/test (fractions of the whole).

    With `fixed_test` (a dataset's official test set) only validation is cut from `data`.
    """
    if not (0 < validation < 1) or not (0 <= test < 1) or validation + test >= 1:
        raise DataError(f"bad split fractions validation={validation} test={test}")
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(data)).tolist()
    n = len(idx)
    n_val = max(1, int(round(n * validation)))
    if fixed_test is not None:
        val, train = idx[:n_val], idx[n_val:]
        test_ds = fixed_test
    else:
        n_test = max(1, int(round(n * test)))
        test_idx, val, train = idx[:n_test], idx[n_test : n_test + n_val], idx[n_test + n_val :]
        test_ds = data.subset(test_idx, f"{data.name}:test")
    if len(train) < 2:
        raise DataError(f"{data.name}: only {len(data)} examples, too few to split")
    return Splits(data.subset(train, f"{data.name}:train"), data.subset(val, f"{data.name}:validation"),
                  test_ds, seed, data.name)
