"""Reports (JSON, Markdown, self-contained HTML with plots) and the `leanlm bench/evaluate` commands."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from leanlm.bench.measure import SCHEMA, BenchConfig, BenchResult, benchmark
from leanlm.bench.report import write_report
from leanlm.data import TextDataset

FAST = dict(warmup=1, repeats=2, throughput_repeats=1, throughput_batch=4, seq_len=32, memory=False)
TEXTS = ["A gorgeous, witty, seductive movie.", "The plot is a mess and the acting is worse.",
         "It's a charming and often affecting journey.", "Dull, lifeless and far too long."]


@pytest.fixture(scope="module")
def result(tiny_clf):
    from leanlm.models.tiny import tiny_encoder

    data = TextDataset(TEXTS, [1, 0, 1, 0], ["negative", "positive"], "hand")
    other = tiny_encoder("sequence-classification", seed=5)
    return benchmark({"fp32 <a>": tiny_clf, "other": other}, data=data, config=BenchConfig(**FAST), progress=False)


def test_write_report(result, tmp_path):
    paths = write_report(result, tmp_path / "rep", title="tiny & test")
    assert {"json", "markdown", "html", "throughput.png", "quality_vs_latency.png"} <= set(paths)
    data = json.loads(paths["json"].read_text())
    assert data["schema"] == SCHEMA and len(data["rows"]) == 2
    md = paths["markdown"].read_text()
    assert md.startswith("# tiny & test") and "| model |" in md and "throughput.png" in md
    html = paths["html"].read_text()
    assert html.count("<img") == 2 and "data:image/png;base64," in html
    assert "fp32 &lt;a&gt; (ref)" in html and "<a>" not in html  # names are escaped
    assert "tiny &amp; test" in html and "Machine and protocol" in html
    for name in ("throughput.png", "quality_vs_latency.png"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a report can be re-rendered from its JSON alone
    again = write_report(BenchResult.from_json(paths["json"]), tmp_path / "again")
    assert again["html"].exists()


def test_from_json_rejects_other_files(tmp_path):
    from leanlm.errors import LeanlmError

    (tmp_path / "x.json").write_text('{"rows": []}')
    with pytest.raises(LeanlmError, match="schema"):
        BenchResult.from_json(tmp_path / "x.json")


@pytest.fixture(scope="module")
def saved_clf(tiny_clf, tmp_path_factory):
    return tiny_clf.save(tmp_path_factory.mktemp("m") / "tiny-clf")


def test_cli_bench_and_evaluate(saved_clf, tmp_path):
    from leanlm.cli import app

    runner = CliRunner()
    out = tmp_path / "report"
    r = runner.invoke(app, ["bench", str(saved_clf), str(saved_clf), "--repeats", "2", "--throughput-repeats", "1",
                            "--warmup", "0", "--seq-len", "32", "--no-memory", "--out", str(out),
                            "--dataset", "movie-snippets", "--eval-limit", "16"])
    assert r.exit_code == 0, r.output
    assert "tiny-clf (ref)" in r.output and "tiny-clf #2" in r.output
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert rows[0]["eval_n"] == 16 and rows[1]["agreement"] == 1.0
    assert (out / "report.html").exists() and (out / "report.md").exists()

    r = runner.invoke(app, ["evaluate", str(saved_clf), "--limit", "16", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["n"] == 16

    from leanlm.errors import LeanlmError

    r = runner.invoke(app, ["bench", str(saved_clf), "--dataset", "no-such-data", "--no-memory"])
    assert r.exit_code != 0 and isinstance(r.exception, LeanlmError)


def test_cli_missing_model_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "leanlm.cli", "bench", str(tmp_path / "missing"), "--no-memory"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    err = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(err) == 1 and "does not exist" in err[0], proc.stderr


def _many_rows(n=20):
    """A result whose points crowd together, as 20 variants of one model family do."""
    rows = []
    for i in range(n):
        rows.append({"name": f"minilm variant {i:02d} int8-{'nncf' if i % 2 else 'dynamic'}", "runtime": "torch",
                     "latency_ms_p50": 10.0 + (i % 5) * 0.05 + (i // 10) * 4, "latency_ms_p99": 12.0,
                     "throughput_seq_s": 100.0 + i, "throughput_ratio": 1 + i / 100,
                     "accuracy": 0.80 + (i % 4) * 0.0005, "latency_batch": 1, "throughput_batch": 32,
                     "seq_len": 128})
    return BenchResult.from_dict({"schema": SCHEMA, "rows": rows, "machine": {}, "config": {},
                                  "reference": rows[0]["name"]})


def test_crowded_plot_numbers_points_with_a_key(tmp_path):
    from leanlm.bench.report import _LABEL_OFFSETS, _place_labels, plots

    result = _many_rows(20)
    paths = write_report(result, tmp_path / "crowded", title="20 rows")
    png = paths["quality_vs_latency.png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    # the layout: numbers of points that sit on top of each other get different, free slots
    screen = [(100.0, 100.0)] * 6 + [(400.0, 300.0)]
    offsets = _place_labels(screen, [str(i + 1) for i in range(7)], 110 / 72)
    assert len(set(offsets[:6])) == 6 and offsets[6] == _LABEL_OFFSETS[0]
    assert _place_labels(screen, [str(i + 1) for i in range(7)], 110 / 72) == offsets  # deterministic
