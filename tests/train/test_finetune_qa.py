"""Extractive QA end to end on a tiny BERT: fine-tune through the one loop on ~50 real SQuAD questions,
evaluate (EM/F1), save/load, the CLI, and the same answers from ONNX Runtime, OpenVINO and int8."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import leanlm
from leanlm.cli import app
from leanlm.data import load_splits
from leanlm.data.qa import evaluate_answers, predict_answers
from leanlm.data.squad import read_squad
from leanlm.errors import LeanlmError, UnsupportedError
from leanlm.models.tiny import tiny_encoder
from leanlm.train.loop import LoopConfig
from leanlm.train.qa import QAFinetuneConfig

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
DECODE = dict(max_length=96, stride=32)


@pytest.fixture(scope="module")
def small_squad(squad_path, tmp_path_factory):
    """~50 questions of the shared SQuAD file: 10 from each of its first 5 articles, as a SQuAD file."""
    raw = json.loads(squad_path.read_text())
    arts = []
    for art in raw["data"][:5]:
        para = art["paragraphs"][0]
        arts.append({"title": art["title"], "paragraphs": [{"context": para["context"], "qas": para["qas"][:10]}]})
    path = tmp_path_factory.mktemp("squad") / "small-squad.json"
    path.write_text(json.dumps({"version": "1.1", "data": arts}))
    return path


@pytest.fixture(scope="module")
def trained(small_squad, tmp_path_factory):
    out = tmp_path_factory.mktemp("qa") / "qa"
    base = tiny_encoder("question-answering")
    cfg = QAFinetuneConfig(loop=LoopConfig(epochs=2, lr=2e-3, patience=0), batch_size=8, **DECODE)
    model = leanlm.finetune(base, load_splits(str(small_squad)), cfg, output=out, progress=False)
    return model, out


def test_finetune_trains_through_the_loop_and_records_em_f1(trained):
    model, out = trained
    rec = model.record
    assert model.task == "question-answering" and rec.data["split"] == "by article"
    assert rec.data["train_windows"] >= rec.data["train_used"] >= 10
    hist = rec.training["result"]["history"]
    assert len(hist) == 2 and hist[-1]["loss"] < hist[0]["loss"]  # it learns something
    test = rec.metrics["test"]
    assert set(test) == {"exact_match", "f1", "n"} and 0 <= test["exact_match"] <= test["f1"] <= 100
    back = leanlm.load(out)
    assert back.task == "question-answering" and type(back.module).__name__ == "BertForQuestionAnswering"
    assert back.record.metrics == json.loads(json.dumps(rec.metrics))


def test_evaluate_matches_the_recorded_test_score_after_reload(trained, small_squad):
    model, out = trained
    res = leanlm.evaluate(leanlm.load(out), str(small_squad), max_length=96, stride=32)
    assert res["f1"] == pytest.approx(model.record.metrics["test"]["f1"])
    assert res["n"] == model.record.metrics["test"]["n"] and len(res["examples"]) >= 1


def test_cli_evaluate_and_finetune(trained, small_squad, tmp_path):
    _, out = trained
    runner = CliRunner()
    r = runner.invoke(app, ["evaluate", str(out), "--dataset", str(small_squad), "--max-length", "96",
                            "--stride", "32", "--json"])
    assert r.exit_code == 0, r.output
    assert set(json.loads(r.stdout.strip().splitlines()[-1])) >= {"exact_match", "f1", "n"}
    base = tiny_encoder("question-answering").save(tmp_path / "base")
    r = runner.invoke(app, ["finetune", str(tmp_path / "ft"), "--task", "question-answering", "--model", str(base),
                            "--dataset", str(small_squad), "--epochs", "1", "--max-length", "64", "--stride", "16",
                            "--batch-size", "16", "--train-size", "16", "--lr", "1e-3"])
    assert r.exit_code == 0, r.output
    assert "exact match" in r.output and leanlm.load(tmp_path / "ft").task == "question-answering"
    r = runner.invoke(app, ["finetune", str(tmp_path / "bad"), "--task", "question-answering", "--peft", "lora",
                            "--dataset", str(small_squad)])
    assert isinstance(r.exception, UnsupportedError) and "fine-tunes every weight" in str(r.exception)


def test_wrong_data_for_the_task_is_one_clear_error(tiny_clf, tiny_qa, small_squad):
    with pytest.raises(LeanlmError, match="question-answering data"):
        leanlm.finetune(tiny_clf, str(small_squad))
    with pytest.raises(LeanlmError, match="SQuAD-format data"):
        leanlm.finetune(tiny_qa, "movie-snippets", QAFinetuneConfig())


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_runtimes_give_torch_logits_and_answers(trained, small_squad, backend, tmp_path):
    from leanlm.runtime.convert import convert

    model, _ = trained
    examples = read_squad(small_squad).examples[:12]
    conv = convert(model, backend)
    batch = model.encode([e.question + " " + e.context for e in examples[:3]], max_length=96)
    ref, got = model(**batch), conv(**batch)
    assert got.shape == ref.shape and ref.shape[-1] == 2
    assert torch.allclose(got, ref, atol=1e-3, rtol=1e-3)
    conv.save(tmp_path / backend)
    back = leanlm.load(tmp_path / backend)
    assert back.backend == backend and back.task == "question-answering"
    assert predict_answers(back, examples, **DECODE) == predict_answers(model, examples, **DECODE)


def test_int8_keeps_the_spans(trained, small_squad):
    # int8-nncf on QA is a row of tests/compress/test_quantize_contract.py; here: the decoded answers
    from leanlm.compress.quantize.int8_dynamic import Int8Dynamic

    model, _ = trained
    q = leanlm.quantize(model, Int8Dynamic(backend="onnxruntime"))
    assert q.backend == "onnxruntime" and q.record.extra["int8-dynamic"]["excluded_nodes"] >= 1  # qa_outputs in float
    examples = read_squad(small_squad).examples
    a, b = predict_answers(model, examples, **DECODE), predict_answers(q, examples, **DECODE)
    assert sum(x == y for x, y in zip(a, b)) / len(a) >= 0.8
    f_float, f_int8 = evaluate_answers(model, examples, **DECODE)["f1"], evaluate_answers(q, examples, **DECODE)["f1"]
    assert abs(f_float - f_int8) <= 10
