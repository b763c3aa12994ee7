"""The speed gate with injected timings: the noise is measured, and a win inside it is no win."""
from __future__ import annotations

import itertools

import pytest

from leanlm.optimize.gate import SpeedGate


class M:
    def __init__(self, speed):
        self.speed = speed


def jittery(noise=0.05):
    """Each call's figures wobble by up to +-noise, deterministically."""
    wobble = itertools.cycle([1 + noise, 1 - noise, 1.0])

    def timer(models, threads):
        return [{"throughput_seq_s": m.speed * next(wobble), "latency_ms_p50": 1e3 / (m.speed * next(wobble))} for m in models]

    return timer


@pytest.mark.parametrize("speed, passed, reason", [
    (100.0, False, "not faster than noise"),
    (104.0, False, "not faster than noise"),
    (150.0, True, ""),
])
def test_gate_rejects_wins_inside_the_noise(speed, passed, reason):
    gate = SpeedGate(M(100.0), jittery(), "throughput", noise_repeats=3)
    noise = gate.calibrate()
    assert 0.05 < noise < 0.2
    v = gate.judge(M(speed))
    assert v.passed is passed and reason in v.reason
    assert (f"{100 * noise:.1f} %" in v.reason) is (not passed)


def test_min_speedup_and_latency_target():
    gate = SpeedGate(M(100.0), jittery(0.0), "latency", noise_repeats=2, min_speedup=3.0)
    assert gate.calibrate() == 0.0
    v = gate.judge(M(200.0))
    assert not v.passed and "below the speed target" in v.reason and v.ratio == pytest.approx(2.0)
    assert gate.judge(M(400.0)).passed
