"""benchmarks/decode_paired.py on the tiny decoder: row builders, one interleaved round, missing peers
skipped with their reason, the report files and the verdict. Nothing here is a timing: no speed is asserted."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import _decode_peers as peers  # noqa: E402
import decode_paired as dp  # noqa: E402

from leanlm.errors import UnsupportedError  # noqa: E402

# one row of each kind (the other peers' skip paths are tested on their own below and in
# tests/runtime/test_llamacpp_errors.py); a tiny model, one round, nothing compiled
ONLY = ["transformers fp32 generate", "transformers static+compile", "leanlm int8", "leanlm OpenVINO int8",
        "llama.cpp q8_0", "OpenVINO GenAI int8"]
SMOKE = ["--tiny", "--tokens", "6", "--rounds", "1", "--no-compile", "--kld-tokens", "32", "--threads", "1",
         "--prompt-tokens", "16", "--only", ",".join(ONLY)]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("paired")
    assert dp.main([*SMOKE, "--out", str(out)]) == 0
    return out, json.loads((out / "decode-paired.json").read_text())


def test_every_row_is_measured_or_skipped_with_a_reason(report):
    _, doc = report
    names = [r["name"] for r in doc["rows"]] + list(doc["skipped"])
    assert sorted(names) == sorted(ONLY)
    assert {"transformers fp32 generate", dp.BASELINE, "leanlm int8"} <= set(names) - set(doc["skipped"])
    assert all(why and "\n" not in why for why in doc["skipped"].values())
    for r in doc["rows"]:  # one round of 6 tokens on a shared machine: finite, not meaningful
        assert math.isfinite(r["decode_ms"]) and r["prefill_ms"] > 0
        assert r["tokens_per_s"] == pytest.approx(1e3 / r["decode_ms"])
        assert "kld" in r["quality"] or "error" in r["quality"]
    base = next(r for r in doc["rows"] if r["name"] == dp.BASELINE)
    assert base["x_baseline"] == pytest.approx(1.0) and base["quality"]["reference"]
    assert base["same_tokens_as_plain"] == 6  # the static-cache baseline decodes what plain generate does


def test_peers_get_same_bits_ratios_and_their_own_metrics(report):
    _, doc = report
    rows = {r["name"]: r for r in doc["rows"]}
    if "OpenVINO GenAI int8" in rows:
        assert rows["OpenVINO GenAI int8"]["genai_ttft_ms"] > 0  # GenAI's own perf_metrics kept beside wall clock
        assert rows["leanlm int8"]["fastest_peer"] in {"OpenVINO GenAI int8", "llama.cpp q8_0"}
        assert rows["OpenVINO GenAI int8"]["quality"]["kld"] < 0.05  # same weights, 8-bit: close to float
    for r in rows.values():
        assert ("x_peer" in r) == (r["kind"] != "peer" and dp.fastest_peer(doc["rows"], r["bits"]) is not None)


def test_files_and_last_line_is_the_verdict(report, capsys):
    out, doc = report
    md = (out / "decode-paired.md").read_text()
    assert md.rstrip().splitlines()[-1] == doc["verdict"] and doc["verdict"].startswith("VERDICT: ")
    rows = {r["name"]: r for r in doc["rows"]}
    assert "leanlm OpenVINO int8" in rows or "leanlm OpenVINO int8" in doc["skipped"]
    assert "leanlm OpenVINO int8" in md


def test_missing_genai_is_skipped_not_a_crash(monkeypatch, tiny_lm, tmp_path):
    def missing():
        raise UnsupportedError("the openvino-genai backend needs OpenVINO GenAI: pip install 'leanlm[genai]'")

    monkeypatch.setattr(peers, "require_genai", missing)
    s = dp.Settings(tokens=2, rounds=1, threads=1, compile=False, kld_tokens=0)
    from decode import prompt_ids

    only = {"OpenVINO GenAI int8", "OpenVINO GenAI int4"}
    rows, skipped = dp.build_rows(dp.row_builders(tiny_lm, prompt_ids(tiny_lm.tokenizer, 8), s, tmp_path), s, only,
                                  log=lambda m: None)
    assert not rows and set(skipped) == only and all("openvino-genai" in why for why in skipped.values())


def _row(name, kind, bits, ms, prefill, kld=None):
    return {"name": name, "kind": kind, "bits": bits, "decode_ms": ms, "prefill_ms": prefill,
            "quality": {} if kld is None else {"kld": kld}}


@pytest.mark.parametrize("ours8, ours4, expect", [
    ((2.0, 5.0, 0.005), (1.0, 3.0, 0.04), "4/4 targets met"),
    ((2.0, 5.0, 0.05), (1.0, 3.0, 0.04), "8-bit >= 1.2x peer MISSED"),  # fast but KL over 0.01
    ((4.0, 5.0, 0.005), (1.0, 3.0, 0.04), "8-bit >= 1.2x peer MISSED"),  # 1.0x the peer
    ((2.0, 9.0, 0.005), (1.0, 3.0, 0.04), "TTFT <= fastest peer MISSED"),
])
def test_verdict(ours8, ours4, expect):
    rows = [_row(dp.BASELINE, "baseline", None, 10.0, 20.0),
            _row("leanlm int8", "leanlm", 8, *ours8), _row("leanlm int4", "leanlm", 4, *ours4),
            _row("llama.cpp q8_0", "peer", 8, 4.0, 6.0), _row("OpenVINO GenAI int4", "peer", 4, 3.0, 4.0)]
    timings = {r["name"]: {"decode_ms": [r["decode_ms"]], "prefill_ms": [r["prefill_ms"]]} for r in rows}
    built = {r["name"]: dp.Row(r["name"], r["kind"], r["bits"], lambda n: []) for r in rows}
    res = dp.summarize(built, timings, {r["name"]: r["quality"] for r in rows})
    line = dp.verdict(res, {})
    assert expect in line, line


def test_verdict_without_peers_is_not_met():
    line = dp.verdict([_row("leanlm int8", "leanlm", 8, 1.0, 1.0, 0.0)], {"llama.cpp q8_0": "not installed"})
    assert line.startswith("VERDICT: 0/4") and "n/a" in line and "1 rows skipped" in line
