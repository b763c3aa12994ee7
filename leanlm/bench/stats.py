"""Uncertainty of benchmark quality figures: paired bootstrap intervals.

An accuracy delta between two models measured on the same ~1,000 test examples moves by about
half a point when a handful of examples flip, so a delta is only shown with its interval. The
bootstrap is paired (both models are scored on the same resampled examples), which is what makes
the interval of a difference narrow when the two models mostly agree.

Example:
    >>> d = paired_bootstrap(float_correct, int8_correct)        # 0/1 per test example
    >>> format_interval(d)
    '-0.38 [-1.05, +0.28]'
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from leanlm.errors import DataError

# Resamples per chunk: bounds memory at CHUNK x (distinct values) integers whatever `resamples` is.
_CHUNK = 1000


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided bootstrap interval (same units as the estimate)."""

    estimate: float
    low: float
    high: float
    confidence: float
    resamples: int

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def paired_bootstrap(reference: Sequence[float], model: Sequence[float], resamples: int = 2000,
                     confidence: float = 0.95, seed: int = 0, scale: float = 100.0) -> Interval:
    """Mean of (model - reference) per example, with a percentile paired-bootstrap interval.

    Args:
        reference: per-example scores of the reference model (e.g. 1 = correct, 0 = wrong).
        model: the other model's scores on the same examples, in the same order.
        resamples: bootstrap resamples.
        confidence: two-sided coverage of the interval, e.g. 0.95.
        seed: random seed (same inputs and seed, same interval).
        scale: multiplies the result (100 turns a difference of accuracies into points).

    Example:
        >>> paired_bootstrap([1, 1, 0, 1], [1, 0, 0, 1]).estimate
        -25.0
    """
    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(model, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or len(a) == 0:
        raise DataError(f"paired bootstrap needs two equally long, non-empty score lists (got {a.shape} and {b.shape})")
    if not (isinstance(resamples, int) and resamples >= 1 and 0.0 < confidence < 1.0):
        raise DataError(f"paired bootstrap needs resamples >= 1 and 0 < confidence < 1, got {resamples}, {confidence}")
    diff = b - a
    # A resample's mean depends only on how often each distinct difference is drawn, so drawing
    # those counts from a multinomial is the index bootstrap exactly, at O(distinct values) per
    # resample (3 for accuracy: -1, 0, +1) instead of O(examples).
    values, counts = np.unique(diff, return_counts=True)
    rng = np.random.default_rng(seed)
    n = len(diff)
    means = np.concatenate([rng.multinomial(n, counts / n, size=min(_CHUNK, resamples - start)) @ values / n
                            for start in range(0, resamples, _CHUNK)])
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return Interval(float(scale * diff.mean()), float(scale * low), float(scale * high), confidence, resamples)


def format_interval(interval: Interval | None, spec: str = "+.2f") -> str:
    """'-0.38 [-1.05, +0.28]' ('-' when there is no interval)."""
    if interval is None:
        return "-"
    return f"{interval.estimate:{spec}} [{interval.low:{spec}}, {interval.high:{spec}}]"
