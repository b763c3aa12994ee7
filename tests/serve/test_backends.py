"""Contract: every kind of model directory leanlm writes serves the same way and answers like offline."""
from __future__ import annotations

import asyncio

import httpx
import pytest
import torch

from leanlm.serve import ModelRegistry, ServeConfig, create_app

TEXTS = ["A gorgeous, witty, seductive movie.", "Dull and far too long."]


def _torch(clf, tmp):
    return clf


def _onnxruntime(clf, tmp):
    from leanlm.runtime.convert import convert

    return convert(clf, "onnxruntime")


def _openvino_static(clf, tmp):
    from leanlm.runtime.convert import convert
    from leanlm.runtime.openvino import with_shapes

    return with_shapes(convert(clf, "openvino"), [(2, 32)])  # two texts pad to 32 tokens: the static graph


def _ensemble(clf, tmp):
    from leanlm.compress.ensemble import ensemble
    from leanlm.models.tiny import tiny_encoder

    a, b = clf.save(tmp / "a"), tiny_encoder(seed=1).save(tmp / "b")
    return ensemble([a, b])


ROWS = {"torch": _torch, "onnxruntime": _onnxruntime, "openvino-static": _openvino_static, "ensemble": _ensemble}


@pytest.mark.parametrize("kind", list(ROWS))
def test_served_classifier_matches_offline(kind, tiny_clf, tmp_path):
    import leanlm

    saved = ROWS[kind](tiny_clf, tmp_path).save(tmp_path / kind)
    model = leanlm.load(saved)  # what the server would load
    with torch.inference_mode():
        offline = torch.softmax(model(**model.encode(TEXTS)).float(), -1)

    async def main():
        app = create_app(ModelRegistry({kind: model}, ServeConfig(warmup=False, max_wait_ms=20)))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            together = (await c.post("/v1/classify", json={"input": TEXTS})).json()
            apart = await asyncio.gather(*(c.post("/v1/classify", json={"input": t}) for t in TEXTS))
            return together, [r.json() for r in apart]

    together, apart = asyncio.run(main())
    if kind == "openvino-static":
        from leanlm.serve.encoders import encode

        assert encode(model, [(t, 12) for t in TEXTS], 512)["input_ids"].shape == (2, 32)
    for i, row in enumerate(together["data"]):
        assert list(row["probabilities"].values()) == pytest.approx(offline[i].tolist(), abs=1e-4)
        assert apart[i]["data"][0]["probabilities"] == pytest.approx(row["probabilities"], abs=1e-4)


@pytest.mark.integration
def test_bundled_minilm_serves_embeddings_like_leanlm_embed():
    import numpy as np

    import leanlm

    registry = ModelRegistry.load(["minilm-l6"], ServeConfig(warmup=False))  # a bundled name, as on a fresh clone
    assert registry.names() == ["minilm-l6"]

    async def main():
        app = create_app(registry)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return (await c.post("/v1/embeddings", json={"input": TEXTS})).json()

    body = asyncio.run(main())
    E = np.array([d["embedding"] for d in body["data"]])
    assert E.shape == (2, 384) and np.allclose(E, leanlm.embed(registry.models["minilm-l6"].model, TEXTS), atol=1e-5)
