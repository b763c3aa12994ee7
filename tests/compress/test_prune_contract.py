"""Contract every structured pruning method meets, on tiny real models.

One row per (config, model fixture, check of the promised shapes). Every row: the parameter
count really drops, matrices have the promised shapes, outputs are finite, save -> load gives
IDENTICAL outputs, the config survives JSON and leanlm.json. To add a method, add a row.
"""
from __future__ import annotations

import zlib

import pytest
import torch

import leanlm
from leanlm.compress.prune import PruneContext
from leanlm.compress.prune._importance import blocks, param_count
from leanlm.compress.prune.heads import HeadPruning
from leanlm.compress.prune.layers import LayerDrop
from leanlm.compress.prune.neurons import FfnPruning
from leanlm.config import BaseConfig


def heads_left(n):
    def check(m, extra):
        bs = blocks(m.module)
        assert sum(b.heads for b in bs) == n
        for b in bs:  # rows of q/k/v and columns of o follow the head count
            q, k, v = (b.get(p) for p in b.layout.qkv)
            assert q.out_features == b.out.in_features == b.heads * b.head_dim
            assert k.out_features == v.out_features == b.units * b.head_dim
            assert getattr(b.attn, "num_attention_heads", b.heads) == b.heads
    return check


def widths(fn):
    def check(m, extra):
        ws = [b.width for b in blocks(m.module)]
        assert fn(ws), ws
        for b in blocks(m.module):
            assert all(b.get(p).out_features == b.width for p in b.layout.ffn_in)
    return check


def layers_left(n):
    def check(m, extra):
        assert len(blocks(m.module)) == m.module.config.num_hidden_layers == n
        assert extra["layers_after"] == n
    return check


# (config, model fixture, check(pruned model, record extra)); tiny models: 2 layers x 4 heads,
# the decoder with 2 KV heads (groups of 2), FFN 256 (encoders) / 192 (decoder)
CONTRACT = [
    (HeadPruning(0.5), "tiny_clf", heads_left(4)),
    (HeadPruning(0.5, scope="layer", score="taylor", rescale=True), "tiny_emb", heads_left(4)),
    (HeadPruning(0.5), "tiny_lm", heads_left(4)),
    (HeadPruning(heads={0: [1, 3]}, score="magnitude"), "tiny_clf", heads_left(6)),
    (FfnPruning(0.5), "tiny_clf", widths(lambda ws: sum(ws) == 256 and all(w % 16 == 0 for w in ws))),
    (FfnPruning(0.5, scope="layer", score="magnitude", multiple_of=8, rescale=True), "tiny_lm",
     widths(lambda ws: ws == [96, 96])),
    (FfnPruning(0.25, score="taylor"), "tiny_emb", widths(lambda ws: sum(ws) in range(368, 400))),
    (LayerDrop(count=1), "tiny_clf", layers_left(1)),
    (LayerDrop(ratio=0.5, strategy="even"), "tiny_lm", layers_left(1)),
    (LayerDrop(keep=(1,)), "tiny_emb", layers_left(1)),
]


def _id(row) -> str:
    cfg, fixture, _ = row
    return f"{cfg.name}-{fixture}-{zlib.crc32(cfg.to_json().encode()) % 1000:03d}"  # stable across runs


def outputs(model, texts):
    return model(**model.encode(texts, max_length=32)).float()


@pytest.mark.parametrize("row", CONTRACT, ids=[_id(r) for r in CONTRACT])
def test_contract(row, request, tmp_path, sentences, calibration):
    config, fixture, check = row
    base = request.getfixturevalue(fixture)
    labels = [i % 2 for i in range(len(calibration))] if base.task == "sequence-classification" else None
    pruned = leanlm.prune(base, config, PruneContext(calibration=calibration, labels=labels, max_length=32))
    extra = pruned.record.extra[config.name]
    assert param_count(pruned.module) < param_count(base.module)
    assert extra["params_after"] == param_count(pruned.module) < extra["params_before"] == param_count(base.module)
    check(pruned, extra)

    out = outputs(pruned, sentences)
    assert torch.isfinite(out).all() and out.shape[0] == len(sentences)

    pruned.save(tmp_path / "p")
    back = leanlm.load(tmp_path / "p")
    assert torch.equal(outputs(back, sentences), out)
    assert param_count(back.module) == param_count(pruned.module)

    assert BaseConfig.from_json(config.to_json()) == config
    assert BaseConfig.from_dict(config.to_dict()) == config
    assert back.record.techniques[-1] == config.to_dict()
    assert back.record.technique_configs()[-1] == config


def test_scores_are_deterministic(tiny_clf, calibration):
    a, b = (leanlm.prune(tiny_clf, FfnPruning(0.5), calibration=calibration, max_length=32) for _ in range(2))
    assert a.record.extra["ffn"]["width_after"] == b.record.extra["ffn"]["width_after"]
    for x, y in zip(blocks(a.module), blocks(b.module)):
        assert torch.equal(x.ffn_out.weight, y.ffn_out.weight)
