"""Extractive QA over HTTP (in-process): span decoding on a real tiny BERT QA model, strided windows, batching."""
from __future__ import annotations

import asyncio

import httpx
import pytest
import torch

import leanlm
from leanlm.models.tiny import tiny_encoder
from leanlm.serve import ModelRegistry, ServeConfig, create_app
from leanlm.serve.qa import best_span, windows

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

CONTEXT = ("The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, "
           "a region in France. They were descended from Norse raiders and pirates from Denmark, Iceland and "
           "Norway who, under their leader Rollo, agreed to swear fealty to King Charles III of West Francia.")
QUESTIONS = ["In what country is Normandy located?", "Who was the Norse leader?", "When were the Normans in Normandy?"]


@pytest.fixture(scope="module")
def qa_model(tmp_path_factory):
    # through a saved directory: the new task must survive save -> leanlm.load
    path = tiny_encoder("question-answering").save(tmp_path_factory.mktemp("qa") / "qa")
    model = leanlm.load(path)
    assert model.task == "question-answering" and type(model.module).__name__ == "BertForQuestionAnswering"
    return model


@pytest.fixture(scope="module")
def app(qa_model):
    models = {"qa": qa_model, "clf": tiny_encoder()}
    return create_app(ModelRegistry(models, ServeConfig(max_wait_ms=50, max_tokens=48, max_texts=40, warmup=False)))


def call(app, bodies):
    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as c:
            return await asyncio.gather(*(c.post("/v1/answer", json=b) for b in bodies))

    return asyncio.run(main())


def brute_force(start: torch.Tensor, end: torch.Tensor, in_context: list[bool], longest: int):
    """Every (i, j) pair scored the slow, obvious way."""
    ctx = [k for k, c in enumerate(in_context) if c]
    ps = torch.softmax(start[ctx].float(), 0)
    pe = torch.softmax(end[ctx].float(), 0)
    pairs = [(float(ps[a] * pe[b]), ctx[a], ctx[b]) for a in range(len(ctx)) for b in range(len(ctx))
             if ctx[a] <= ctx[b] < ctx[a] + longest]
    return max(pairs)


@pytest.mark.parametrize("longest", [1, 3, 30])
def test_best_span_matches_brute_force_on_real_logits(qa_model, longest):
    w = windows(qa_model.tokenizer, QUESTIONS[0], CONTEXT, 512, longest)
    assert len(w.offsets) == 1
    with torch.inference_mode():
        out = qa_model.runner(input_ids=torch.tensor(w.features["input_ids"]),
                              token_type_ids=torch.tensor(w.features["token_type_ids"]))
    score, i, j = best_span(out.start_logits[0], out.end_logits[0], w.in_context[0], longest)
    ref = brute_force(out.start_logits[0], out.end_logits[0], w.in_context[0], longest)
    assert (i, j) == ref[1:] and score == pytest.approx(ref[0], rel=1e-5)
    assert w.in_context[0][i] and w.in_context[0][j] and 0 <= j - i < longest


def test_answer_is_the_context_span_at_its_offsets(app, qa_model):
    (r,) = call(app, [{"model": "qa", "question": QUESTIONS[0], "context": CONTEXT, "max_answer_tokens": 5}])
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"answer", "score", "start", "end", "windows"} and body["model"] == "qa"
    assert body["answer"] and CONTEXT[body["start"]:body["end"]] == body["answer"]
    assert 0 < body["score"] <= 1
    assert len(qa_model.tokenizer(body["answer"], add_special_tokens=False)["input_ids"]) <= 5


def test_long_context_is_split_into_strided_windows(app):
    long = " ".join([CONTEXT] * 4)  # ~4x the 48-token window
    (r,) = call(app, [{"question": QUESTIONS[1], "context": long}])  # model omitted: qa is the only one that can
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["windows"] > 4
    assert long[body["start"]:body["end"]] == body["answer"]
    w = windows(app.state.registry.models["qa"].tokenizer, QUESTIONS[1], long, 48)  # what the handler made
    spans = [[o for o, c in zip(offs, ctx) if c] for offs, ctx in zip(w.offsets, w.in_context)]
    for a, b in zip(spans, spans[1:]):
        assert b[0][0] < a[-1][1], "consecutive windows must overlap"
    assert spans[0][0][0] == 0 and spans[-1][-1][1] == len(long)


def test_concurrent_questions_batch_and_get_their_own_answers(app):
    bodies = [{"model": "qa", "question": q, "context": c} for q in QUESTIONS for c in (CONTEXT, CONTEXT[:120])]
    alone = [call(app, [b])[0].json() for b in bodies]
    together = call(app, bodies)
    stats = app.state.registry.models["qa"].metrics()["answer"]
    assert stats["batch_size"]["max"] > 1  # they shared a forward pass (padded to the longest window)
    for a, t, b in zip(alone, together, bodies):
        t = t.json()
        assert (t["start"], t["end"], t["answer"]) == (a["start"], a["end"], a["answer"])
        assert t["score"] == pytest.approx(a["score"], rel=1e-4, abs=1e-6)
        assert b["context"][t["start"]:t["end"]] == t["answer"]


@pytest.mark.parametrize("body, status, code", [
    ({"model": "qa", "question": " ", "context": CONTEXT}, 400, "invalid_value"),
    ({"model": "qa", "question": "Who?"}, 400, "missing_context"),  # no --knowledge-base to fall back on
    ({"model": "qa", "question": "Who?", "context": 3}, 400, "invalid_value"),
    ({"model": "qa", "question": "Who? " * 40, "context": CONTEXT}, 400, "context_length_exceeded"),
    ({"model": "qa", "question": "Who?", "context": CONTEXT * 40}, 400, "context_length_exceeded"),
    ({"model": "qa", "question": "Who?", "context": CONTEXT, "max_answer_tokens": 0}, 400, "invalid_value"),
    ({"model": "clf", "question": "Who?", "context": CONTEXT}, 400, "unsupported_model"),
    ({"model": "nope", "question": "Who?", "context": CONTEXT}, 404, "model_not_found"),
])
def test_bad_questions_get_one_line_json_errors(app, body, status, code):
    (r,) = call(app, [body])
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and "\n" not in err["message"]


def test_models_lists_the_answer_capability(app):
    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            return (await c.get("/v1/models/qa")).json()

    info = asyncio.run(main())
    assert info["task"] == "question-answering" and info["capabilities"] == ["answer"]
