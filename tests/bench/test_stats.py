"""Paired bootstrap intervals: exactness of the point estimate, coverage, pairing, seeding, errors."""
from __future__ import annotations

import numpy as np
import pytest

from leanlm.bench.stats import Interval, format_interval, paired_bootstrap
from leanlm.errors import DataError, LeanlmError


def _pair(n: int = 1000, flips: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = (rng.random(n) < 0.85).astype(float)
    b = a.copy()
    i = rng.choice(n, flips, replace=False)
    b[i] = 1 - b[i]
    return a, b


def test_estimate_is_the_accuracy_delta_in_points():
    a, b = _pair()
    ci = paired_bootstrap(a, b)
    assert ci.estimate == pytest.approx(100 * (b.mean() - a.mean()))
    assert ci.low <= ci.estimate <= ci.high and ci.confidence == 0.95 and ci.resamples == 2000


def test_identical_models_have_a_zero_width_interval():
    a, _ = _pair()
    assert paired_bootstrap(a, a) == Interval(0.0, 0.0, 0.0, 0.95, 2000)


def test_pairing_narrows_the_interval_of_mostly_agreeing_models():
    a, b = _pair(flips=10)
    paired = paired_bootstrap(a, b)
    # unpaired: the two accuracies' own sampling noise (each ~1.1 pt) would add up
    rng = np.random.default_rng(0)
    unpaired = [100 * (rng.choice(b, len(b)).mean() - rng.choice(a, len(a)).mean()) for _ in range(500)]
    assert paired.high - paired.low < 0.5 * (np.percentile(unpaired, 97.5) - np.percentile(unpaired, 2.5))


def test_matches_the_index_bootstrap():
    a, b = _pair(n=400, flips=40, seed=3)
    rng = np.random.default_rng(1)
    idx = rng.integers(0, len(a), (4000, len(a)))
    ref_low, ref_high = np.percentile(100 * (b[idx] - a[idx]).mean(1), [2.5, 97.5])
    ci = paired_bootstrap(a, b, resamples=4000, seed=7)
    assert ci.low == pytest.approx(ref_low, abs=0.35) and ci.high == pytest.approx(ref_high, abs=0.35)


def test_seeded_and_float_scores():
    a, b = _pair()
    assert paired_bootstrap(a, b, seed=1) == paired_bootstrap(a, b, seed=1)
    cos = paired_bootstrap(np.ones(50), np.linspace(0.9, 1.0, 50), scale=1.0, confidence=0.9)
    assert cos.estimate == pytest.approx(-0.05) and -0.06 < cos.low < cos.high < -0.04
    assert cos != paired_bootstrap(np.ones(50), np.linspace(0.9, 1.0, 50), scale=1.0, confidence=0.9, seed=1)


@pytest.mark.parametrize("a, b, kw", [([], [], {}), ([1, 0], [1], {}), ([1], [1], {"resamples": 0}),
                                      ([1], [1], {"confidence": 1.0})])
def test_bad_input_raises_a_leanlm_error(a, b, kw):
    with pytest.raises(DataError):
        paired_bootstrap(a, b, **kw)
    assert issubclass(DataError, LeanlmError)


def test_format():
    assert format_interval(Interval(-0.375, -1.05, 0.28, 0.95, 10)) == "-0.38 [-1.05, +0.28]"
    assert format_interval(None) == "-"
