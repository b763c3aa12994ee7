"""The real server over HTTP: every endpoint, streaming, the openai client, bad input, batching, 429."""
from __future__ import annotations

import asyncio
import base64
import json

import httpx
import numpy as np
import pytest

KEY = "test-key-123"  # the `server` fixture's --api-key (conftest.KEY)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def sse(lines) -> list:
    """Parsed `data:` payloads of a server-sent-event stream; the last one is the string "[DONE]"."""
    out = []
    for line in lines:
        if line.startswith("data: "):
            payload = line[len("data: "):]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"] and "\n" not in err["message"]
    if code:
        assert err["code"] == code, err
    return err


# ----------------------------------------------------------------------------- endpoints

def test_health_ready_metrics_need_no_key(server):
    for path in ("/health", "/ready", "/metrics"):
        assert httpx.get(server.url + path).status_code == 200
    assert httpx.get(server.url + "/ready").json()["models"] == ["clf", "emb", "lm"]


def test_models(client):
    data = client.get("/v1/models").json()
    assert data["object"] == "list"
    by_id = {m["id"]: m for m in data["data"]}
    assert by_id["clf"]["capabilities"] == ["classify", "embed"] and by_id["clf"]["labels"] == ["negative", "positive"]
    assert by_id["emb"]["capabilities"] == ["embed"] and by_id["lm"]["capabilities"] == ["generate"]
    assert client.get("/v1/models/lm").json()["task"] == "causal-lm"
    assert_error(client.get("/v1/models/nope"), 404, "model_not_found")


def test_classify(client, sentences):
    r = client.post("/v1/classify", json={"model": "clf", "input": sentences})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [d["index"] for d in body["data"]] == list(range(len(sentences)))
    for d in body["data"]:
        assert d["label"] in ("negative", "positive")
        assert sum(d["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert d["score"] == max(d["probabilities"].values())
    assert body["usage"]["prompt_tokens"] > len(sentences)
    one = client.post("/v1/classify", json={"input": sentences[0]}).json()  # the only classifier: model optional
    assert one["data"][0]["probabilities"] == pytest.approx(body["data"][0]["probabilities"], abs=1e-5)


def test_embeddings_float_and_base64(client, model_dirs):
    import leanlm

    texts = ["a cat sat on the mat", "stocks fell sharply"]
    f = client.post("/v1/embeddings", json={"model": "emb", "input": texts}).json()
    assert f["object"] == "list" and f["model"] == "emb" and len(f["data"]) == 2
    E = np.array([d["embedding"] for d in f["data"]])
    assert E.shape == (2, 64) and np.allclose(np.linalg.norm(E, axis=1), 1, atol=1e-4)
    assert np.allclose(E, leanlm.embed(leanlm.load(model_dirs["emb"]), texts), atol=1e-5)  # same as offline
    b = client.post("/v1/embeddings", json={"model": "emb", "input": texts, "encoding_format": "base64"}).json()
    B = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in b["data"]])
    assert np.allclose(B, E, atol=1e-6)


def test_completions_and_chat(client):
    body = {"model": "lm", "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}
    a, b = client.post("/v1/completions", json=body).json(), client.post("/v1/completions", json=body).json()
    assert a["object"] == "text_completion" and a["choices"][0]["text"] == b["choices"][0]["text"]  # greedy
    assert a["choices"][0]["finish_reason"] in ("stop", "length") and a["usage"]["completion_tokens"] <= 8
    chat = client.post("/v1/chat/completions", json={"model": "lm", "max_tokens": 6, "temperature": 0,
                                                     "messages": [{"role": "user", "content": "Hi there"}]}).json()
    msg = chat["choices"][0]["message"]
    assert chat["object"] == "chat.completion" and msg["role"] == "assistant" and isinstance(msg["content"], str)
    assert chat["usage"]["total_tokens"] == chat["usage"]["prompt_tokens"] + chat["usage"]["completion_tokens"]


@pytest.mark.parametrize("path,extra", [
    ("/v1/completions", {"prompt": "The weather today is"}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Tell me a story"}]}),
])
def test_streaming_matches_the_whole_answer(client, path, extra):
    body = {"model": "lm", "max_tokens": 10, "temperature": 0, **extra}
    whole = client.post(path, json=body).json()["choices"][0]
    with client.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse(r.iter_lines())
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    if "messages" in body:
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert text == whole["message"]["content"]
    else:
        text = "".join(c["choices"][0]["text"] for c in chunks)
        assert text == whole["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["finish_reason"]
    assert chunks[-1]["usage"]["completion_tokens"] >= 1


def test_openai_client(server):
    openai = pytest.importorskip("openai")
    c = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=30)
    comp = c.completions.create(model="lm", prompt="Hello", max_tokens=5, temperature=0)
    assert isinstance(comp.choices[0].text, str) and comp.usage.completion_tokens >= 1
    chat = c.chat.completions.create(model="lm", messages=[{"role": "user", "content": "Hi"}], max_tokens=5)
    assert chat.choices[0].message.role == "assistant"
    streamed = list(c.chat.completions.create(model="lm", messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=5, temperature=0, stream=True))
    assert streamed and all(s.object == "chat.completion.chunk" for s in streamed)
    emb = c.embeddings.create(model="emb", input=["a cat", "a dog"])  # the client asks for base64
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 64
    assert abs(float(np.linalg.norm(emb.data[0].embedding)) - 1) < 1e-4
    with pytest.raises(openai.NotFoundError):
        c.embeddings.create(model="nope", input="x")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()


# ----------------------------------------------------------------------------- bad input

LONG = " ".join(["word"] * 100)  # > --max-tokens 64

BAD = [  # (name, path, body (bytes = raw), headers, status, code)
    ("malformed json", "/v1/classify", b'{"input": ', {}, 400, "invalid_json"),
    ("not an object", "/v1/embeddings", b"[1, 2]", {}, 400, "invalid_json"),
    ("not utf-8", "/v1/classify", b"\xff\xfe{}", {}, 400, "invalid_json"),
    ("wrong type", "/v1/classify", {"model": "clf", "input": 3}, {}, 400, "invalid_value"),
    ("wrong type in list", "/v1/embeddings", {"model": "emb", "input": ["a", 7]}, {}, 400, "invalid_value"),
    ("missing field", "/v1/completions", {"model": "lm"}, {}, 400, "invalid_value"),
    ("string for int", "/v1/completions", {"model": "lm", "prompt": "hi", "max_tokens": "5"}, {}, 400, "invalid_value"),
    ("empty string", "/v1/classify", {"model": "clf", "input": ""}, {}, 400, "invalid_value"),
    ("blank in list", "/v1/embeddings", {"model": "emb", "input": ["ok", "   "]}, {}, 400, "invalid_value"),
    ("empty list", "/v1/classify", {"model": "clf", "input": []}, {}, 400, "invalid_value"),
    ("empty prompt", "/v1/completions", {"model": "lm", "prompt": ""}, {}, 400, "invalid_value"),
    ("no messages", "/v1/chat/completions", {"model": "lm", "messages": []}, {}, 400, "invalid_value"),
    ("bad role", "/v1/chat/completions", {"model": "lm", "messages": [{"role": "bot", "content": "x"}]}, {}, 400, None),
    ("temperature range", "/v1/completions", {"model": "lm", "prompt": "hi", "temperature": 5}, {}, 400, None),
    ("n > 1", "/v1/completions", {"model": "lm", "prompt": "hi", "n": 2}, {}, 400, None),
    ("oversized body", "/v1/classify", {"model": "clf", "input": "x" * 30000}, {}, 413, "request_too_large"),
    ("too many tokens", "/v1/classify", {"model": "clf", "input": ["fine", LONG]}, {}, 400, "context_length_exceeded"),
    ("prompt too long", "/v1/completions", {"model": "lm", "prompt": LONG}, {}, 400, "context_length_exceeded"),
    ("too many new tokens", "/v1/completions", {"model": "lm", "prompt": "hi", "max_tokens": 1000}, {}, 400, None),
    ("too many texts", "/v1/embeddings", {"model": "emb", "input": ["a"] * 41}, {}, 400, "too_many_inputs"),
    ("unknown model", "/v1/classify", {"model": "nope", "input": "x"}, {}, 404, "model_not_found"),
    ("wrong endpoint for model", "/v1/classify", {"model": "lm", "input": "x"}, {}, 400, "unsupported_model"),
    ("ambiguous model", "/v1/embeddings", {"input": "x"}, {}, 400, "model_required"),
    ("missing key", "/v1/classify", {"model": "clf", "input": "x"}, {"Authorization": ""}, 401, "invalid_api_key"),
    ("wrong key", "/v1/classify", {"model": "clf", "input": "x"}, {"Authorization": "Bearer nope"}, 401,
     "invalid_api_key"),
    ("not bearer", "/v1/classify", {"model": "clf", "input": "x"}, {"Authorization": f"Basic {KEY}"}, 401, None),
    ("unknown route", "/v1/nothing", {}, {}, 404, "not_found"),
]


@pytest.mark.parametrize("name,path,body,headers,status,code", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_a_json_error_and_the_server_carries_on(client, name, path, body, headers, status, code):
    kw = {"content": body, "headers": {"content-type": "application/json", **headers}} if isinstance(body, bytes) \
        else {"json": body, "headers": headers}
    assert_error(client.post(path, **kw), status, code)
    assert client.post("/v1/classify", json={"model": "clf", "input": "a good film"}).status_code == 200


def test_chunked_oversized_body_is_refused(client):
    def chunks():
        yield b'{"model": "clf", "input": "'
        for _ in range(40):
            yield b"x" * 1000
        yield b'"}'

    r = client.post("/v1/classify", content=chunks(), headers={"content-type": "application/json"})
    assert_error(r, 413, "request_too_large")


def test_request_id_is_echoed_and_logged_as_json(client, server):
    r = client.get("/v1/models", headers={"x-request-id": "abc-1"})
    assert r.headers["x-request-id"] == "abc-1"
    assert len(client.get("/v1/models").headers["x-request-id"]) == 32
    lines = [json.loads(l) for l in server.log.read_text().splitlines() if l.startswith("{")]
    mine = [l for l in lines if l["request_id"] == "abc-1"]
    assert mine and mine[0]["path"] == "/v1/models" and mine[0]["status"] == 200 and mine[0]["ms"] >= 0


# ----------------------------------------------------------------------------- batching and load

async def _each(url: str, bodies: list[dict], path: str = "/v1/classify") -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                                 limits=httpx.Limits(max_connections=len(bodies))) as c:
        return await asyncio.gather(*(c.post(path, json=b) for b in bodies))


def test_concurrent_requests_are_batched(server, client, model_dirs, sentences):
    import torch

    import leanlm

    before = client.get("/metrics", params={"format": "json"}).json()["models"]["clf"]["classify"]
    texts = [[sentences[i % 8], f"request {i} says hello"] for i in range(16)]  # different lengths pad together
    rs = asyncio.run(_each(server.url, [{"model": "clf", "input": t} for t in texts]))
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs if r.status_code != 200]
    m0 = leanlm.load(model_dirs["clf"])
    for r, t in zip(rs, texts):  # every request gets back exactly its own texts' answers
        with torch.inference_mode():
            offline = torch.softmax(m0(**m0.encode(t)), -1)
        got = [list(d["probabilities"].values()) for d in r.json()["data"]]
        assert np.allclose(got, offline.numpy(), atol=1e-4)
    m = client.get("/metrics", params={"format": "json"}).json()
    stats = m["models"]["clf"]["classify"]
    assert stats["requests"] - before["requests"] == 16
    assert stats["batches"] - before["batches"] < 16 and stats["batch_size"]["max"] > 2  # > one request's 2 texts
    assert m["latency_ms"]["/v1/classify"]["p99"] >= m["latency_ms"]["/v1/classify"]["p50"] > 0
    assert m["requests"]["/v1/classify"]["200"] >= 16 and m["queue_depth"] == 0
    prom = client.get("/metrics")  # Prometheus' format by default, parsed by prometheus-client's own parser
    assert prom.headers["content-type"].startswith("text/plain")
    from prometheus_client.parser import text_string_to_metric_families

    fams = {f.name: f for f in text_string_to_metric_families(prom.text)}
    assert fams["leanlm_requests"].type == "counter" and fams["leanlm_request_duration_seconds"].type == "histogram"
    value = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    clf = (("capability", "classify"), ("model", "clf"))
    assert value[("leanlm_batches_total", clf)] == stats["batches"]
    assert value[("leanlm_batch_size_count", clf)] == stats["batches"]  # one observation per forward pass
    assert value[("leanlm_batch_size_sum", clf)] == stats["items"]
    assert value[("leanlm_queue_time_seconds_count", clf)] == stats["requests"]
    ok = value[("leanlm_requests_total", (("model", "clf"), ("path", "/v1/classify"), ("status", "200")))]
    assert ok >= 16
    assert_error(client.get("/metrics", params={"format": "xml"}), 400)


def test_full_queue_answers_429_then_recovers(tight_server):
    texts = ["a fairly long sentence about films and the people who watch them"] * 64
    rs = asyncio.run(_each(tight_server.url, [{"input": texts}] * 24))
    codes = sorted(r.status_code for r in rs)
    assert set(codes) <= {200, 429} and codes.count(200) >= 1 and codes.count(429) >= 1, codes
    shed = next(r for r in rs if r.status_code == 429)
    assert_error(shed, 429, "overloaded") and shed.headers["retry-after"] == "1"
    ok = httpx.post(tight_server.url + "/v1/classify", json={"input": "and now a calm request"})
    assert ok.status_code == 200
    m = httpx.get(tight_server.url + "/metrics", params={"format": "json"}).json()
    stats = m["models"]["clf"]["classify"]
    assert stats["rejected"] == codes.count(429) and stats["batch_size"]["histogram"] == {"64": stats["batches"] - 1,
                                                                                        "1": 1}
    assert m["requests"]["/v1/classify"]["429"] == codes.count(429)
