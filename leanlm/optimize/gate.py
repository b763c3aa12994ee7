"""The speed gate: a candidate must beat the baseline, timed beside it, by more than the noise.

Noise is measured on the spot: the baseline is timed against itself (two copies interleaved,
`noise_repeats` times), and the largest apparent speed-up of the baseline over itself is what
"faster" must exceed. A candidate is then timed in an interleaved run with the baseline (the
benchmark protocol of `leanlm.bench.measure`, same inputs, rotated order, same threads) and
rejected, with the numbers, unless its ratio clears 1 + noise (and the caller's minimum speed-up).

The timing function is injectable, so tests check the gate's logic without trusting any clock.

Example:
    >>> gate = SpeedGate(baseline, BenchConfig(repeats=5), target="throughput")
    >>> gate.calibrate()                      # noise from repeated baseline timings
    >>> verdict = gate.judge(candidate_model)
    >>> verdict.passed, verdict.reason
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

TARGETS = ("throughput", "latency", "size")
# speed figure of each target, and whether higher is better
_KEY = {"throughput": ("throughput_seq_s", True), "latency": ("latency_ms_p50", False),
        "size": ("throughput_seq_s", True)}


def default_timer(config: Any, texts: Sequence[str]) -> Callable[[Sequence[Any], int], list[dict]]:
    """Interleaved, rotated timing of several models with `threads` threads (the benchmark protocol)."""
    from leanlm.bench.timing import _speed, threads_set

    def timer(models: Sequence[Any], threads: int) -> list[dict]:
        with threads_set(threads):
            return _speed(list(models), config, list(texts))

    return timer


def speedup(row: dict, ref: dict, target: str) -> float:
    """How many times faster `row` is than `ref` on the target's speed figure (> 1: faster)."""
    key, up = _KEY[target]
    a, b = float(row[key]), float(ref[key])
    return a / b if up else b / a


@dataclass
class Verdict:
    passed: bool
    ratio: float  # candidate speed / baseline speed (same run)
    reason: str
    row: dict
    baseline_row: dict


class SpeedGate:
    """Times candidates against the baseline in the same process and rejects those within the noise.

    Args:
        baseline: the float model every candidate is compared with.
        timer: fn(models, threads) -> one speed dict per model (see `default_timer`).
        target: "throughput", "latency" or "size" (size judges speed on throughput and never
            rejects on it: the size objective is the point).
        noise_repeats: baseline-versus-itself runs measuring the noise (>= 2).
        min_speedup: a candidate must also be at least this many times faster.
        threads: thread count of the noise runs.
    """

    def __init__(self, baseline: Any, timer: Callable[[Sequence[Any], int], list[dict]], target: str = "throughput",
                 noise_repeats: int = 3, min_speedup: float = 1.0, threads: int = 1):
        self.baseline, self.timer, self.target = baseline, timer, target
        self.noise_repeats, self.min_speedup, self.threads = max(2, noise_repeats), min_speedup, threads
        self.noise: float | None = None
        self.noise_ratios: list[float] = []

    def calibrate(self) -> float:
        """Relative run-to-run noise: the largest |ratio - 1| of the baseline timed against itself."""
        import copy

        twin = copy.copy(self.baseline)  # same weights, a second entry in the interleaved rounds
        ratios = []
        for _ in range(self.noise_repeats):
            a, b = self.timer([self.baseline, twin], self.threads)
            r = speedup(a, b, self.target)
            ratios += [r, 1.0 / r]
        self.noise_ratios = ratios
        self.noise = max(abs(r - 1.0) for r in ratios)
        return self.noise

    def threshold(self) -> float:
        if self.noise is None:
            self.calibrate()
        return max(1.0 + float(self.noise), self.min_speedup)

    def judge(self, model: Any, threads: int | None = None) -> Verdict:
        cand, base = self.timer([model, self.baseline], threads or self.threads)
        ratio = speedup(cand, base, self.target)
        need = self.threshold()
        what = "latency" if self.target == "latency" else "throughput"
        if self.target == "size":
            return Verdict(True, ratio, "", cand, base)
        if ratio > need:
            return Verdict(True, ratio, "", cand, base)
        why = (f"not faster than noise: {what} x{ratio:.2f} of the baseline <= x{1 + self.noise:.2f} "
               f"(run-to-run noise {100 * self.noise:.1f} %)") if need == 1.0 + self.noise else \
              f"below the speed target: {what} x{ratio:.2f} of the baseline < x{need:.2f}"
        return Verdict(False, ratio, why, cand, base)
