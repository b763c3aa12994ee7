"""Contract of the unstructured pruning methods (magnitude, Wanda, n:m) on tiny real models.

One row per (config, model fixture, maximum relative squared output error vs float). Every row:
outputs finite, the requested sparsity achieved (within 1 %) in every target layer, n:m patterns
exact, heads left dense, save -> load identical, the config survives JSON and leanlm.json, and
the record says plainly that the zeros buy no speed on PyTorch. To add a method, add a row.
"""
from __future__ import annotations


import pytest
import torch

from _contract import outputs, rel_error, row_id as _id

import leanlm
from leanlm.compress.prune import PruneContext
from leanlm.compress.prune.magnitude import MagnitudePruning, smallest_mask, sparsity_note
from leanlm.compress.prune.semi24 import SemiStructured, is_nm, nm_mask
from leanlm.compress.prune.wanda import Wanda, wanda_scores
from leanlm.compress.quantize import eligible_linears
from leanlm.compress.quantize.weight_only import Int8WeightOnly
from leanlm.config import BaseConfig
from leanlm.errors import ConfigError, UnsupportedError

CONTRACT = [
    (MagnitudePruning(0.5), "tiny_clf", 0.5),
    (MagnitudePruning(0.3, scope="global"), "tiny_lm", 0.5),
    (MagnitudePruning(0.9), "tiny_emb", 0.5),
    (Wanda(0.5), "tiny_emb", 0.05),
    (Wanda(0.6, samples=8), "tiny_lm", 0.5),
    (SemiStructured(), "tiny_clf", 0.5),
    (SemiStructured(score="wanda"), "tiny_lm", 0.5),
    (SemiStructured(n=4, m=8), "tiny_emb", 0.05),
]


def target_sparsity(config) -> float:
    return getattr(config, "sparsity", None) or 1 - config.n / config.m


@pytest.mark.parametrize("row", CONTRACT, ids=[_id(r) for r in CONTRACT])
def test_contract(row, request, tmp_path, sentences, calibration):
    config, fixture, max_err = row
    base = request.getfixturevalue(fixture)
    pruned = leanlm.prune(base, config, PruneContext(calibration=calibration, max_length=32))

    ref, out = outputs(base, sentences), outputs(pruned, sentences)
    assert torch.isfinite(out).all()
    assert rel_error(ref, out) <= max_err, f"{config.name}: relative error {rel_error(ref, out):.3f} > {max_err}"

    info = pruned.record.extra[config.name]
    linears = eligible_linears(pruned.module)
    want = target_sparsity(config)
    assert set(info["sparsity"]) == set(linears)
    assert abs(info["overall_sparsity"] - want) <= 0.01
    if getattr(config, "scope", "layer") == "layer":
        for name, layer in linears.items():
            assert abs(float((layer.weight == 0).float().mean()) - want) <= 0.01, name
            assert info["sparsity"][name] == pytest.approx(want, abs=0.01)
    if isinstance(config, SemiStructured):
        assert all(is_nm(layer.weight, config.n, config.m) for layer in linears.values())
        assert info["pattern"] == f"{config.n}:{config.m}"
    head = next(m for n, m in pruned.module.named_modules()
                if {"classifier", "lm_head", "pooler"} & set(n.split(".")) and isinstance(m, torch.nn.Linear))
    assert float((head.weight == 0).float().mean()) < 0.01  # heads stay dense
    assert all(float((m.weight == 0).float().mean()) < 0.01 for m in eligible_linears(base.module).values())
    assert "no faster" in info["speed"]

    pruned.save(tmp_path / "p")
    back = leanlm.load(tmp_path / "p")
    assert torch.equal(outputs(back, sentences), out)
    assert BaseConfig.from_json(config.to_json()) == config
    assert back.record.technique_configs()[-1] == config


def test_masks_keep_exact_counts_even_with_ties():
    scores = torch.zeros(3, 8)  # all tied: a threshold would prune everything
    mask = smallest_mask(scores, 5)
    assert mask.sum(-1).tolist() == [5, 5, 5]
    nm = nm_mask(torch.arange(16.0).reshape(2, 8), 2, 4)
    assert nm.tolist()[0] == [True, True, False, False] * 2  # the two smallest of each group of 4


def test_wanda_keeps_weights_on_high_activation_inputs():
    layer = torch.nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.1, 1.0, 0.9, 0.8], [0.2, 0.5, 0.7, 0.6]]))
    norm = torch.tensor([100.0, 1.0, 1.0, 1.0])  # input 0 carries outsized activations
    mask = smallest_mask(wanda_scores(layer, norm), 2)
    assert not mask[:, 0].any()  # magnitude would prune column 0 first; Wanda keeps it
    assert not smallest_mask(layer.weight.abs(), 2)[:, 1:].all()


def test_wanda_uses_activations(tiny_emb, calibration):
    mag = leanlm.prune(tiny_emb, MagnitudePruning(0.5), calibration=calibration)
    wanda = leanlm.prune(tiny_emb, Wanda(0.5), calibration=calibration)
    differs = [n for n, m in eligible_linears(wanda.module).items()
               if not torch.equal(m.weight == 0, eligible_linears(mag.module)[n].weight == 0)]
    assert differs  # same sparsity, different weights chosen


def test_speed_notes(tiny_clf):
    from leanlm.runtime.openvino import sparse_weights_support

    semi = leanlm.prune(tiny_clf, SemiStructured())
    assert "CUDA" in sparsity_note(semi, "torch") and "no faster" in sparsity_note(semi)
    assert "ONNX Runtime" in sparsity_note(semi, "onnxruntime")
    amx, why = sparse_weights_support()
    ov = sparsity_note(semi, "openvino")
    assert ("int8" in ov) if amx else (why in ov and "no speed-up" in ov)
    assert "no unstructured sparsity" in sparsity_note(tiny_clf)


@pytest.mark.parametrize("make,match", [
    (lambda: MagnitudePruning(0.0), "sparsity"),
    (lambda: MagnitudePruning(1.0), "sparsity"),
    (lambda: MagnitudePruning(True), "sparsity"),
    (lambda: MagnitudePruning(0.5, scope="row"), "scope"),
    (lambda: Wanda(1.2), "sparsity"),
    (lambda: Wanda(samples=0), "samples"),
    (lambda: SemiStructured(n=4, m=4), "n must"),
    (lambda: SemiStructured(n=0), "n must"),
    (lambda: SemiStructured(m=1), "m must"),
    (lambda: SemiStructured(score="random"), "score"),
    (lambda: BaseConfig.from_dict({"type": "magnitude", "ratio": 0.5}), "unknown option"),
])
def test_invalid_options(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_refusals(tiny_emb, tiny_lm):
    q = leanlm.quantize(tiny_lm, Int8WeightOnly())
    with pytest.raises(UnsupportedError, match="already quantized"):
        leanlm.prune_(q, MagnitudePruning(0.5))
    with pytest.raises(ConfigError, match="calibration"):
        leanlm.prune(tiny_emb, Wanda(0.5))
    with pytest.raises(ConfigError, match="calibration"):
        leanlm.prune(tiny_emb, SemiStructured(score="wanda"))
    with pytest.raises(UnsupportedError, match="does not divide"):
        leanlm.prune(tiny_emb, SemiStructured(n=1, m=3))  # hidden 64
    with pytest.raises(UnsupportedError, match="no eligible"):
        leanlm.prune(tiny_emb, MagnitudePruning(0.5, skip=("layer", "pooler")))


def test_openvino_sparse_weights_compile_option(tiny_emb, tmp_path, sentences, calibration):
    """Pruned + int8-nncf, compiled with CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE: recorded, reloaded, same outputs,
    and the kernel report says which FullyConnected kernels run (sparse ones only exist on AMX CPUs)."""
    pytest.importorskip("nncf")
    from leanlm.compress.quantize.nncf_static import Int8Nncf
    from leanlm.runtime.openvino import sparse_kernels, sparse_weights_support, with_sparse_weights

    m = leanlm.prune(tiny_emb, MagnitudePruning(0.8))
    leanlm.quantize_(m, Int8Nncf(samples=16), calibration=calibration, max_length=32)
    sparse = with_sparse_weights(m, rate=0.5)
    assert sparse.record.extra["runtime"]["sparse_weights_rate"] == 0.5 and "sparse_weights_rate" not in m.record.extra["runtime"]
    batch = m.encode(sentences, max_length=32)
    torch.testing.assert_close(sparse(**batch), m(**batch), atol=1e-3, rtol=1e-3)
    sparse.save(tmp_path / "s")
    back = leanlm.load(tmp_path / "s")
    assert back.runner.sparse_rate == 0.5 and torch.equal(back(**batch), sparse(**batch))
    report = sparse_kernels(back)
    assert report["rate"] == 0.5 and report["fully_connected"] >= 12 and sum(report["kernels"].values()) == report["fully_connected"]
    if not sparse_weights_support()[0]:
        assert report["sparse_layers"] == []  # no AMX: the property is accepted and changes nothing
    with pytest.raises(UnsupportedError, match="sparse_weights_rate"):
        with_sparse_weights(m, rate=1.5)
    with pytest.raises(UnsupportedError, match="OpenVINO setting"):
        with_sparse_weights(tiny_emb, rate=0.5)
