"""Contract every quantization method meets, on tiny real models.

One row per (config, model fixture, minimum SQNR in dB of the model's outputs vs float on held-out
sentences). Every row: outputs finite, error within bound, save -> load gives IDENTICAL outputs,
the config survives JSON and leanlm.json. To add a method, add a row.
"""
from __future__ import annotations

import math
import zlib

import pytest
import torch

import leanlm
from leanlm.compress.quantize import QuantContext, is_quantized
from leanlm.compress.quantize.gptq import GPTQ
from leanlm.compress.quantize.half import Half, fast_on_this_cpu
from leanlm.compress.quantize.int8_dynamic import Int8Dynamic
from leanlm.compress.quantize.int8_static import Int8Static
from leanlm.compress.quantize.mixed import MixedPrecision
from leanlm.compress.quantize.nncf_static import Int8Nncf
from leanlm.compress.quantize.smoothquant import SmoothQuant
from leanlm.compress.quantize.weight_only import Int4WeightOnly, Int8WeightOnly
from leanlm.config import BaseConfig
from leanlm.errors import ConfigError, UnsupportedError


# (config, model fixture, minimum output SQNR in dB vs float)
CONTRACT = [
    (Int8WeightOnly(), "tiny_lm", 35.0),
    (Int8WeightOnly(group_size=32), "tiny_emb", 35.0),
    (Int4WeightOnly(group_size=32), "tiny_lm", 15.0),
    (Int4WeightOnly(group_size=64), "tiny_clf", 15.0),
    (GPTQ(group_size=32), "tiny_lm", 16.0),
    (GPTQ(group_size=32, act_order=True), "tiny_emb", 15.0),
    (SmoothQuant(), "tiny_lm", 30.0),
    (SmoothQuant(alpha=0.5, fold=False), "tiny_emb", 30.0),
    (MixedPrecision(max_divergence=0.0, max_float_layers=2), "tiny_clf", 30.0),
    (MixedPrecision(base=Int4WeightOnly(group_size=32), max_float_layers=1, calibration_size=4), "tiny_lm", 15.0),
    (Half("bf16", force=True), "tiny_lm", 25.0),
    (Int8Dynamic(backend="onnxruntime"), "tiny_clf", 20.0),
    (Int8Static(), "tiny_clf", 20.0),
    (Int8Static(backend="onnxruntime", range_method="percentile"), "tiny_emb", 40.0),
    (Int8Nncf(), "tiny_emb", 25.0),
    # question answering: (B, T, 2) start/end logits, two graph outputs on ONNX Runtime and OpenVINO
    (Int8Nncf(), "tiny_qa", 25.0),
    (Int8Dynamic(backend="onnxruntime"), "tiny_qa", 20.0),
    (Int8Dynamic(), "tiny_qa", 20.0),
]


def _id(row) -> str:
    cfg, fixture, _ = row
    return f"{cfg.name}-{fixture}-{zlib.crc32(cfg.to_json().encode()) % 1000:03d}"  # stable across runs


def outputs(model, texts):
    return model(**model.encode(texts, max_length=32)).float()


def sqnr_floor(q, config, min_db: float) -> float:
    """The SQNR a quantized model must reach: 6 dB less where int8-dynamic chose 7-bit weights (a CPU
    without VNNI): one bit less, ~6 dB less weight SQNR."""
    return min_db - 6.0 if q.record.extra.get(config.name, {}).get("reduce_range") else min_db


def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    noise = float((out - ref).pow(2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float(ref.pow(2).sum()) / noise)


@pytest.mark.parametrize("row", CONTRACT, ids=[_id(r) for r in CONTRACT])
def test_contract(row, request, tmp_path, sentences, calibration):
    config, fixture, min_db = row
    base = request.getfixturevalue(fixture)
    q = leanlm.quantize(base, config, QuantContext(calibration=calibration, max_length=32))
    assert is_quantized(q) and not is_quantized(base)

    ref, out = outputs(base, sentences), outputs(q, sentences)
    assert torch.isfinite(out).all()
    min_db = sqnr_floor(q, config, min_db)
    assert sqnr_db(ref, out) >= min_db, f"{config.name}: SQNR {sqnr_db(ref, out):.1f} dB < {min_db}"

    q.save(tmp_path / "q")
    back = leanlm.load(tmp_path / "q")
    assert torch.equal(outputs(back, sentences), out)

    assert BaseConfig.from_json(config.to_json()) == config
    assert back.record.techniques[-1] == config.to_dict()
    assert back.record.technique_configs()[-1] == config


def test_refuses_already_quantized(tiny_lm):
    q = leanlm.quantize(tiny_lm, Int8WeightOnly())
    with pytest.raises(UnsupportedError, match="already quantized"):
        leanlm.quantize_(q, Int4WeightOnly(group_size=32))


@pytest.mark.parametrize("config", [Int8WeightOnly(skip=("layer", "pooler", "classifier")),
                                    Int4WeightOnly(group_size=32, skip=("layer", "pooler", "classifier")),
                                    GPTQ(skip=("layer", "pooler", "classifier")),
                                    SmoothQuant(skip=("layer", "pooler", "classifier")),
                                    MixedPrecision(base=Int8Dynamic(skip=("layer", "pooler", "classifier")))],
                         ids=lambda c: c.name)
def test_refuses_model_without_eligible_layers(tiny_clf, config, calibration):
    with pytest.raises(UnsupportedError, match="no eligible linear layers"):
        leanlm.quantize(tiny_clf, config, calibration=calibration)


def test_refuses_group_size_that_does_not_divide(tiny_emb):
    with pytest.raises(UnsupportedError, match="does not divide in_features"):
        leanlm.quantize(tiny_emb, Int4WeightOnly(group_size=128))  # hidden 64


@pytest.mark.parametrize("make,match", [
    (lambda: Int4WeightOnly(group_size=0), "group_size"),
    (lambda: Int4WeightOnly(group_size=48), "group_size"),
    (lambda: Int8WeightOnly(group_size=-1), "group_size"),
    (lambda: GPTQ(damp_percent=0), "damp_percent"),
    (lambda: GPTQ(group_size=16), "group_size"),
    (lambda: GPTQ(block_size=100), "block_size"),
    (lambda: SmoothQuant(alpha=1.5), "alpha"),
    (lambda: SmoothQuant(alphas=()), "alphas"),
    (lambda: Half(dtype="fp8"), "dtype"),
    (lambda: MixedPrecision(base="int9-magic"), "Valid"),
    (lambda: MixedPrecision(max_float_layers=-1), "max_float_layers"),
    (lambda: BaseConfig.from_dict({"type": "gptq", "groupsize": 32}), "unknown option"),
])
def test_invalid_options(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


@pytest.mark.parametrize("config", [GPTQ(), SmoothQuant()], ids=lambda c: c.name)
def test_calibrated_methods_need_calibration(tiny_lm, config):
    with pytest.raises(ConfigError, match="needs calibration texts"):
        leanlm.quantize(tiny_lm, config)


def test_fp16_is_honest_about_this_cpu(tiny_lm):
    if fast_on_this_cpu("fp16"):
        assert leanlm.quantize(tiny_lm, Half("fp16")).module.lm_head.weight.dtype == torch.float16
    else:
        with pytest.raises(UnsupportedError, match="no fast fp16"):
            leanlm.quantize(tiny_lm, Half("fp16"))
    assert leanlm.quantize(tiny_lm, Half("fp16", force=True)).module.lm_head.weight.dtype == torch.float16
