"""The three example applications, each run against a real server (a subprocess) on tiny models."""
from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from leanlm.serve.process import ServerProcess

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from leanlm.models.tiny import tiny_decoder, tiny_encoder

    root = tmp_path_factory.mktemp("apps")
    clf = tiny_encoder().save(root / "clf")
    named = {"emb": tiny_encoder("feature-extraction").save(root / "emb"),
             "qa": tiny_encoder("question-answering").save(root / "qa"), "lm": tiny_decoder().save(root / "lm")}
    args = [str(clf), *[a for n, d in named.items() for a in ("--name", f"{n}={d}")], "--knowledge-base",
            str(EXAMPLES / "data" / "support_faq.txt"), "--embedder", "emb", "--max-new-tokens", "16",
            "--no-access-log"]
    s = ServerProcess(args, log=root / "server.log")
    yield s
    s.stop()


def test_sentiment_monitor(server, tmp_path):
    mon = example("sentiment_monitor")
    report = mon.main(["--url", server.url, "--limit", "300", "--window", "40", "--z", "1.0", "--out", str(tmp_path)])
    assert report["dataset"] == "nyt-editorial" and report["snippets"] == 300
    rows = list(csv.DictReader(open(tmp_path / "stream.csv")))
    assert len(rows) == 300 and all(-1 <= float(r["score"]) <= 1 for r in rows)
    assert [int(r["step"]) for r in rows if r["flag"] == "1"] == [f["step"] for f in report["flags"]]
    assert json.loads((tmp_path / "flags.json").read_text())["flags"] == report["flags"]
    assert (tmp_path / "sentiment.png").stat().st_size > 10_000


def test_monitor_rules_on_a_known_series():
    import numpy as np

    mon = example("sentiment_monitor")
    s = np.r_[np.full(50, 0.5), np.full(20, -0.8), np.full(50, 0.5)]
    index = mon.rolling_index(s, alpha=0.3)
    _, flags = mon.drops(index + np.random.default_rng(0).normal(0, 0.01, len(s)), window=20, z=3.0)
    assert len(flags) == 1 and 50 <= flags[0] <= 53  # one flag, right where the drop starts


def test_support_assistant(server, tmp_path):
    app = example("support_assistant")
    out = tmp_path / "answers.json"
    results = app.main(["--url", server.url, "--generate", "--chat-model", "lm", "--max-tokens", "8", "--out",
                        str(out), "How long does a refund take?", "Do gift cards expire?"])
    assert [r["question"] for r in results] == ["How long does a refund take?", "Do gift cards expire?"]
    for r in results:
        assert r["mode"] == "extractive" and r["answer"] in r["source"]["text"] and r["source"]["id"] in r["sources"]
        assert r["source"]["id"].startswith("support_faq:") and isinstance(r["reply"], str)
    assert json.loads(out.read_text()) == results


def test_recommender(server, tmp_path):
    rec = example("recommender")
    args = ["--url", server.url, "--model", "emb", "--limit", "200", "--k", "4", "--out", str(tmp_path)]
    like_item = rec.main(args + ["--item", "7"])
    ids = [n["id"] for n in like_item["neighbours"]]
    assert len(ids) == 4 and "7" not in ids and like_item["catalogue"] == {"dataset": "amazon", "items": 200}
    scores = [n["score"] for n in like_item["neighbours"]]
    assert scores == sorted(scores, reverse=True)
    assert len(list(tmp_path.glob("index-*"))) == 1
    like_text = rec.main(args + ["--text", "the battery died after a week"])  # reuses the saved index
    assert len(like_text["neighbours"]) == 4 and len(list(tmp_path.glob("index-*"))) == 1
    assert json.loads((tmp_path / "recommendations.json").read_text()) == like_text
