"""Knowledge-base answers (in-process): passages from txt/JSONL/SQuAD, retrieval through the served embedder,
the span from the QA model, its source passage; retrieval only without a QA model; bad inputs."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

import leanlm
from leanlm.errors import DataError
from leanlm.models.tiny import tiny_encoder
from leanlm.serve import ModelRegistry, ServeConfig, create_app
from leanlm.serve.knowledge import load_passages

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

FAQ = Path(__file__).resolve().parents[2] / "examples" / "data" / "support_faq.txt"


def ask(app, bodies):
    async def main():
        # the lifespan (index build) runs inside the transport's first startup
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as c:
                ready = await c.get("/ready")
                return ready, await asyncio.gather(*(c.post("/v1/answer", json=b) for b in bodies))

    return asyncio.run(main())


@pytest.fixture(scope="module")
def models():
    return {"qa": tiny_encoder("question-answering"), "emb": tiny_encoder("feature-extraction")}


def test_passage_formats(tmp_path):
    ids, texts = load_passages(FAQ)
    assert len(texts) == 32 and ids[0] == "support_faq:0" and texts[7].startswith("Refunds are issued")
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "a.jsonl").write_text('{"id": "x1", "text": "first"}\n{"context": "second"}\n')
    squad = {"data": [{"title": "T", "paragraphs": [{"context": "ctx one", "qas": []}, {"context": "ctx one"},
                                                    {"context": "ctx two"}]}]}
    (tmp_path / "kb" / "b.json").write_text(json.dumps(squad))
    ids, texts = load_passages(tmp_path / "kb")
    assert ids == ["x1", "a:1", "T:0", "T:2"] and texts == ["first", "second", "ctx one", "ctx two"]
    for bad in (tmp_path / "missing.txt", tmp_path / "kb" / "nothing.csv"):
        with pytest.raises(DataError):
            load_passages(bad)


def test_answer_from_the_knowledge_base(models):
    config = ServeConfig(knowledge_base=str(FAQ), embedder="emb", warmup=False, max_wait_ms=20)
    app = create_app(ModelRegistry(dict(models), config))
    question = "How long do refunds take?"
    ready, (r, with_ctx, other) = ask(app, [{"question": question, "top_k": 4},
                                            {"question": question, "context": "Refunds take a week."},
                                            {"question": "Do gift cards expire?", "model": "qa", "top_k": 2}])
    assert ready.json()["knowledge_base"] == {"source": str(FAQ), "passages": 32, "embedder": "emb"}
    body = r.json()
    assert r.status_code == 200 and body["mode"] == "extractive" and body["model"] == "qa", body
    ids, texts = load_passages(FAQ)
    # the retrieved passages are exactly the embedder's top 4 by cosine
    E, q = leanlm.embed(models["emb"], texts), leanlm.embed(models["emb"], [question])[0]
    assert [s["id"] for s in body["sources"]] == [ids[i] for i in np.argsort(-(E @ q))[:4]]
    src = body["source"]
    assert src["text"][body["start"]:body["end"]] == body["answer"] and body["answer"]
    assert src in [{k: s[k] for k in ("id", "text", "score")} for s in body["sources"]]
    assert body["score"] == max(s["answer_score"] for s in body["sources"])
    assert with_ctx.json()["answer"] in "Refunds take a week." and "source" not in with_ctx.json()  # as before
    assert other.status_code == 200 and len(other.json()["sources"]) == 2


def test_retrieval_only_without_a_qa_model_and_errors(models, tmp_path):
    from leanlm.index import VectorIndex

    ids, texts = load_passages(FAQ)
    saved = VectorIndex.from_texts(models["emb"], texts, ids).save(tmp_path / "faq-index")
    app = create_app(ModelRegistry({"emb": models["emb"]}, ServeConfig(knowledge_base=str(saved), warmup=False)))
    _, (r, bad) = ask(app, [{"question": "Do gift cards expire?", "top_k": 3},
                            {"question": "Do gift cards expire?", "top_k": 0}])
    body = r.json()
    assert body["mode"] == "retrieval" and body["answer"] == body["source"]["text"] == body["sources"][0]["text"]
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "top_k"
    plain = create_app(ModelRegistry({"qa": models["qa"]}, ServeConfig(warmup=False)))
    _, (missing,) = ask(plain, [{"question": "Anything?"}])
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "missing_context"
    with pytest.raises(DataError):  # a wrong knowledge base fails at startup, before serving
        create_app(ModelRegistry({"emb": models["emb"]}, ServeConfig(knowledge_base=str(tmp_path / "nope.txt"))))
