"""Contract of low-rank factorization on tiny real models, plus ONNX / OpenVINO export and the CLI.

One row per (config, model fixture, maximum relative squared output error vs float, or None).
Every row: outputs finite, error within bound, the parameter accounting in leanlm.json matches
the module, save -> load gives identical outputs with no other code, the config survives JSON.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from _contract import outputs, rel_error, row_id as _id

import leanlm
from leanlm.compress.lowrank import FactorizedLinear, LowRank, choose_rank, factorize, factorize_, recipe_step
from leanlm.compress.prune.magnitude import MagnitudePruning
from leanlm.compress.quantize import QuantContext
from leanlm.compress.quantize.weight_only import Int8WeightOnly
from leanlm.config import BaseConfig
from leanlm.errors import ConfigError, UnsupportedError

CONTRACT = [
    (LowRank(energy=0.99, only_if_smaller=False), "tiny_emb", 0.01),
    (LowRank(energy=0.9), "tiny_clf", None),
    (LowRank(rank=8), "tiny_lm", None),
    (LowRank(size_ratio=0.5, whiten=True), "tiny_emb", 0.01),
    (LowRank(rank=16, targets=("intermediate.dense", "value")), "tiny_clf", None),
]


def factorized(model) -> dict[str, FactorizedLinear]:
    return {n: m for n, m in model.module.named_modules() if isinstance(m, FactorizedLinear)}


@pytest.mark.parametrize("row", CONTRACT, ids=[_id(r) for r in CONTRACT])
def test_contract(row, request, tmp_path, sentences, calibration):
    config, fixture, max_err = row
    base = request.getfixturevalue(fixture)
    f = factorize(base, config, QuantContext(calibration=calibration, max_length=32))
    assert not factorized(base)

    ref, out = outputs(base, sentences), outputs(f, sentences)
    assert torch.isfinite(out).all()
    if max_err is not None:
        assert rel_error(ref, out) <= max_err, f"relative error {rel_error(ref, out):.4f} > {max_err}"

    info = f.record.extra["svd"]
    layers = factorized(f)
    assert len(layers) == info["factorized"] > 0
    assert info["params_after"] == sum(p.numel() for p in f.module.parameters())
    assert info["params_before"] == sum(p.numel() for p in base.module.parameters())
    for name, layer in layers.items():
        assert info["layers"][name]["rank"] == layer.rank
        assert layer.first.weight.shape == (layer.rank, layer.in_features)
        if config.only_if_smaller:
            assert layer.rank * (layer.in_features + layer.out_features) < layer.in_features * layer.out_features
    if config.targets:
        assert all(any(t in n for t in config.targets) for n in layers)

    f.save(tmp_path / "f")
    back = leanlm.load(tmp_path / "f")
    assert set(factorized(back)) == set(layers)
    assert torch.equal(outputs(back, sentences), out)
    assert BaseConfig.from_json(config.to_json()) == config
    assert back.record.technique_configs()[-1] == config


def test_rank_choice():
    sigma = torch.tensor([4.0, 2.0, 1.0, 1.0])  # energies 16, 4, 1, 1 of 22
    assert choose_rank(sigma, 8, 4, LowRank(energy=16 / 22)) == 1
    assert choose_rank(sigma, 8, 4, LowRank(energy=0.9)) == 2
    assert choose_rank(sigma, 8, 4, LowRank(energy=1.0)) == 4
    assert choose_rank(sigma, 8, 4, LowRank(rank=99)) == 4
    assert choose_rank(sigma, 64, 64, LowRank(size_ratio=0.5)) == 4  # min(16, full rank 4)
    assert choose_rank(torch.ones(64), 64, 64, LowRank(size_ratio=0.5)) == 16  # 16 * 128 = half of 64 * 64


def test_only_if_smaller_keeps_square_layers(tiny_clf):
    f = factorize(tiny_clf, LowRank(rank=40))  # 64x64: 40*128 > 4096 kept; 64x256: 40*320 < 16384 factorized
    info = f.record.extra["svd"]
    kept = {n for n, v in info["layers"].items() if v.get("kept_dense")}
    assert kept and all(n.endswith(("query", "key", "value", "attention.output.dense")) for n in kept)
    assert set(factorized(f)) == set(info["layers"]) - kept
    forced = factorize(tiny_clf, LowRank(rank=40, only_if_smaller=False))
    assert len(factorized(forced)) == len(info["layers"])


def test_whitening_lowers_output_error(tiny_emb, calibration, sentences):
    ref = outputs(tiny_emb, sentences)
    plain = factorize(tiny_emb, LowRank(size_ratio=0.4))
    white = factorize(tiny_emb, LowRank(size_ratio=0.4, whiten=True), calibration=calibration, max_length=32)
    assert rel_error(ref, outputs(white, sentences)) < rel_error(ref, outputs(plain, sentences))


def test_defaults_and_json():
    assert LowRank().energy == 0.9 and LowRank(rank=4).energy is None
    assert LowRank.from_dict(LowRank(rank=4).to_dict()) == LowRank(rank=4)
    assert LowRank.from_dict(LowRank().to_dict()) == LowRank()


@pytest.mark.parametrize("make,match", [
    (lambda: LowRank(energy=0.0), "energy"),
    (lambda: LowRank(energy=1.5), "energy"),
    (lambda: LowRank(rank=0), "rank"),
    (lambda: LowRank(size_ratio=1.0), "size_ratio"),
    (lambda: LowRank(rank=8, energy=0.9), "one of"),
    (lambda: LowRank(samples=0), "samples"),
    (lambda: LowRank(damp=0), "damp"),
])
def test_invalid_options(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_refusals(tiny_emb, tiny_lm):
    q = leanlm.quantize(tiny_lm, Int8WeightOnly())
    with pytest.raises(UnsupportedError, match="already quantized"):
        factorize_(q, LowRank(rank=4))
    with pytest.raises(ConfigError, match="calibration"):
        factorize(tiny_emb, LowRank(whiten=True))
    with pytest.raises(UnsupportedError, match="no matching"):
        factorize(tiny_emb, LowRank(targets=("no_such_layer",)))
    with pytest.raises(ConfigError, match="not a low-rank config"):
        factorize(tiny_emb, MagnitudePruning(0.5))


def test_composes_with_quantization_and_recipe_step(tiny_lm, tmp_path, sentences, calibration):
    f = recipe_step(tiny_lm.clone(), LowRank(rank=8, whiten=True), teacher=tiny_lm, splits=None,
                    calibration=calibration, labels=None)
    leanlm.quantize_(f, Int8WeightOnly())  # the two factors are plain linears: quantizers see them
    out = outputs(f, sentences)
    f.save(tmp_path / "fq")
    assert torch.equal(outputs(leanlm.load(tmp_path / "fq"), sentences), out)


def test_onnx_and_openvino_match(tiny_emb, sentences):
    from leanlm.runtime.convert import convert

    f = factorize(tiny_emb, LowRank(rank=8))
    batch = f.encode(sentences, max_length=32)
    ref = f(**batch)
    for backend in ("onnxruntime", "openvino"):
        torch.testing.assert_close(convert(f, backend)(**batch), ref, atol=1e-4, rtol=1e-4)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "leanlm.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=300)


def test_cli_end_to_end(tiny_emb, tmp_path):
    tiny_emb.save(tmp_path / "tiny")
    r = _cli("factorize", str(tmp_path / "tiny"), str(tmp_path / "out"), "--rank", "8", "--no-only-if-smaller")
    assert r.returncode == 0, r.stderr
    assert "params" in r.stdout and "->" in r.stdout and "layers factorized" in r.stdout
    back = leanlm.load(tmp_path / "out")
    assert back.record.technique_configs()[-1] == LowRank(rank=8, only_if_smaller=False)
    assert factorized(back)
    bad = _cli("factorize", str(tmp_path / "tiny"), str(tmp_path / "bad"), "--rank", "8", "--energy", "0.9")
    assert bad.returncode == 2 and "one of energy, rank, size_ratio" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()
