"""The app in-process (httpx.ASGITransport): a model that raises inside a batch, the CLI's checks."""
from __future__ import annotations

import asyncio
import json
import os
import time

import httpx
import pytest

from leanlm.models.tiny import tiny_decoder, tiny_encoder
from leanlm.serve import ModelRegistry, ServeConfig, create_app

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

MARKER = "explode"


def _raise_on_marker(model):
    """Make `model` raise inside its forward pass whenever the marker word is in the batch."""
    marker = set(model.tokenizer(f" {MARKER}", add_special_tokens=False).input_ids)  # as it reads mid-sentence

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and marker & set(ids.flatten().tolist()):
            raise RuntimeError("the model broke on this batch")

    model.module.register_forward_pre_hook(hook, with_kwargs=True)
    return model


@pytest.fixture(scope="module")
def app():
    models = {"clf": _raise_on_marker(tiny_encoder()), "lm": _raise_on_marker(tiny_decoder())}
    return create_app(ModelRegistry(models, ServeConfig(max_wait_ms=50, warmup=False)))


def call(app, requests):
    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as c:
            return await asyncio.gather(*(c.post(path, json=body) for path, body in requests))

    return asyncio.run(main())


def test_a_model_that_raises_fails_only_its_batch(app):
    # the bad and the good request arrive within max_wait, so they share a batch and its fate
    bad, same_batch = call(app, [("/v1/classify", {"input": f"this will {MARKER}"}),
                                 ("/v1/classify", {"input": "an innocent text"})])
    for r in (bad, same_batch):
        assert r.status_code == 500, r.text
        err = r.json()["error"]
        assert err["code"] == "model_error" and "the model broke" in err["message"] and "\n" not in err["message"]
    (after,) = call(app, [("/v1/classify", {"input": "an innocent text"})])
    assert after.status_code == 200
    stats = app.state.registry.models["clf"].metrics()["classify"]
    assert stats["failed_batches"] == 1 and stats["batches"] == 2


def test_a_decoder_that_raises(app):
    (plain,) = call(app, [("/v1/completions", {"prompt": f"please {MARKER} now", "max_tokens": 4})])
    assert plain.status_code == 500 and plain.json()["error"]["code"] == "model_error"
    # a stream has sent its 200 already: the error arrives in-band, then [DONE]
    (streamed,) = call(app, [("/v1/completions", {"prompt": f"please {MARKER} now", "max_tokens": 4, "stream": True})])
    events = [l[len("data: "):] for l in streamed.text.splitlines() if l.startswith("data: ")]
    assert json.loads(events[-2])["error"]["code"] == "model_error" and events[-1] == "[DONE]"
    (ok,) = call(app, [("/v1/completions", {"prompt": "a calm prompt", "max_tokens": 4})])
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1


def test_ready_is_503_until_warm():
    registry = ModelRegistry({"clf": tiny_encoder()}, ServeConfig(warmup=False))
    app = create_app(registry)
    (r,) = asyncio.run(_get(app, "/ready"))
    assert r.status_code == 503 and r.json()["status"] == "starting"
    registry.warm()
    (r,) = asyncio.run(_get(app, "/ready"))
    assert r.status_code == 200


async def _get(app, path):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        return [await c.get(path)]


def test_registry_names_and_errors(tmp_path):
    from leanlm.errors import ConfigError
    from leanlm.serve.registry import model_name

    d = tiny_encoder().save(tmp_path / "sentiment")
    assert model_name(str(d)) == "sentiment" and model_name("minilm-l6") == "minilm-l6"
    with pytest.raises(ConfigError, match="--name"):
        ModelRegistry.load([str(d), str(d)])
    with pytest.raises(ConfigError):
        ModelRegistry({})
    with pytest.raises(ConfigError, match="max_batch"):
        ServeConfig(max_batch=0)
    with pytest.raises(ConfigError, match="threads"):
        ServeConfig(threads=0)


def test_threads_are_set_before_the_models_load(tmp_path, monkeypatch):
    import torch

    d = tiny_encoder().save(tmp_path / "clf")
    before = torch.get_num_threads()
    monkeypatch.delenv("LEANLM_THREADS", raising=False)
    try:
        ModelRegistry.load([str(d)], ServeConfig(threads=1))
        assert torch.get_num_threads() == 1 and os.environ["LEANLM_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)
        os.environ.pop("LEANLM_THREADS", None)


@pytest.mark.parametrize("argv,needle", [
    (["serve"], "at least one model"),
    (["serve", "--name", "oops"], "NAME=DIR"),
    (["serve", "x", "--max-batch", "0"], "max_batch"),
    (["serve", "x", "--threads", "0"], "threads"),
    (["serve", "x", "--port", "70000"], "--port"),
    (["serve", "/no/such/dir"], "does not exist"),
])
def test_cli_errors_are_one_line(argv, needle, capsys):
    from leanlm.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and needle in err[0], err


def test_a_request_past_its_timeout_gets_504_and_the_server_carries_on():
    model = tiny_encoder()
    slow = set(model.tokenizer(" slowly", add_special_tokens=False).input_ids)

    def hook(module, args, kwargs):
        if slow & set(kwargs["input_ids"].flatten().tolist()):
            time.sleep(0.6)

    model.module.register_forward_pre_hook(hook, with_kwargs=True)
    app = create_app(ModelRegistry({"clf": model}, ServeConfig(timeout_s=0.3, warmup=False, max_wait_ms=0)))
    (late,) = call(app, [("/v1/classify", {"input": "answer me slowly"})])
    assert late.status_code == 504 and late.json()["error"]["code"] == "timeout"
    time.sleep(0.6)  # the slow batch still holds the model's thread until it ends
    (ok,) = call(app, [("/v1/classify", {"input": "answer me now"})])
    assert ok.status_code == 200
