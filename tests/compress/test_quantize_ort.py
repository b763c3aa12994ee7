"""ONNX Runtime / OpenVINO quantization methods: int8-dynamic(backend="onnxruntime"), int8-static, int8-nncf."""
from __future__ import annotations

import math

import pytest
import torch

import leanlm
from leanlm.compress.quantize import QuantContext
from leanlm.compress.quantize.int8_dynamic import Int8Dynamic, int16_saturation_risk
from leanlm.compress.quantize.int8_static import Int8Static
from leanlm.compress.quantize.nncf_static import Int8Nncf, module_pattern
from leanlm.config import BaseConfig
from leanlm.errors import ConfigError, UnsupportedError

from test_quantize_contract import sqnr_floor


def _out(model, texts):
    return model(**model.encode(texts, max_length=32)).float()


def _sqnr(ref, out):
    noise = float((out - ref).pow(2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float(ref.pow(2).sum()) / noise)


def _check(base, q, config, sentences, tmp_path, min_db):
    ref, out = _out(base, sentences), _out(q, sentences)
    assert torch.isfinite(out).all()
    assert _sqnr(ref, out) >= sqnr_floor(q, config, min_db)
    q.save(tmp_path / "q")
    back = leanlm.load(tmp_path / "q")
    assert back.backend == q.backend and back.record.technique_configs()[-1] == config
    assert torch.equal(_out(back, sentences), out)


def test_int8_dynamic_onnxruntime(tiny_clf, tmp_path, sentences):
    config = Int8Dynamic(backend="onnxruntime")
    q = leanlm.quantize(tiny_clf, config)
    assert q.backend == "onnxruntime" and tiny_clf.backend == "torch" and not tiny_clf.record.techniques
    assert q.record.extra["runtime"]["fused"]["Attention"] == 2
    assert q.record.extra["int8-dynamic"]["excluded_nodes"] >= 2  # pooler and classifier stay float
    assert q.record.extra["int8-dynamic"]["reduce_range"] == int16_saturation_risk()
    _check(tiny_clf, q, config, sentences, tmp_path, 20.0)


def test_int8_dynamic_reduce_range_is_explicit_or_decided_by_the_cpu(tiny_clf, sentences):
    """8-bit weights on a CPU without VNNI saturate ONNX Runtime's int16 pair sums (SQNR below 0 dB
    was seen on an AVX2 EPYC); 7-bit weights never do, on any CPU."""
    q = leanlm.quantize(tiny_clf, Int8Dynamic(backend="onnxruntime", reduce_range=True))
    assert q.record.extra["int8-dynamic"]["reduce_range"] is True
    assert _sqnr(_out(tiny_clf, sentences), _out(q, sentences)) >= 14.0
    with pytest.raises(ConfigError, match="reduce_range needs backend='onnxruntime'"):
        Int8Dynamic(reduce_range=True)


def test_int8_dynamic_onnxruntime_unfused_per_tensor(tiny_emb, tmp_path, sentences):
    config = Int8Dynamic(backend="onnxruntime", fuse=False, per_channel=False, embeddings=True)
    q = leanlm.quantize(tiny_emb, config)
    assert "fused" not in q.record.extra["runtime"]
    _check(tiny_emb, q, config, sentences, tmp_path, 30.0)


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_int8_static_onnxruntime(method, tiny_emb, tmp_path, sentences, calibration):
    config = Int8Static(backend="onnxruntime", range_method=method)
    q = leanlm.quantize(tiny_emb, config, QuantContext(calibration=calibration, max_length=32))
    info = q.record.extra["int8-static"]
    assert q.backend == "onnxruntime" and info["quantize_nodes"] > 0 and info["calibration_texts"] == 16
    _check(tiny_emb, q, config, sentences, tmp_path, 40.0)


def test_int8_static_openvino_uint8(tiny_clf, tmp_path, sentences, calibration):
    config = Int8Static(activations="uint8", symmetric_activations=False, per_channel=False, smooth=0.0)
    q = leanlm.quantize(tiny_clf, config, calibration=calibration)
    assert q.backend == "openvino" and q.record.extra["runtime"]["precision"] == "bf16"
    assert q.record.extra["int8-static"]["smoothed"] == 0
    _check(tiny_clf, q, config, sentences, tmp_path, 10.0)  # per-tensor, unsmoothed: the coarse corner
    assert q.predict(sentences) == tiny_clf.predict(sentences)


def test_int8_static_keeps_noisy_layers_in_float(tiny_emb, calibration):
    q = leanlm.quantize(tiny_emb, Int8Static(backend="onnxruntime", min_sqnr_db=60.0, attention_products=False),
                        calibration=calibration)
    info = q.record.extra["int8-static"]
    assert len(info["kept_float"]) == len(info["input_sqnr_db"]) == 12  # every linear of 2 layers
    assert info["quantize_nodes"] == 0
    q = leanlm.quantize(tiny_emb, Int8Static(backend="onnxruntime", min_sqnr_db=0.0), calibration=calibration)
    assert q.record.extra["int8-static"]["kept_float"] == []


def test_smoothing_is_exact_in_float(tiny_emb, sentences, calibration):
    import copy

    from leanlm.compress.quantize import eligible_linears
    from leanlm.compress.quantize.int8_static import _apply_scales, _batches, _plan

    module = copy.deepcopy(tiny_emb.module)
    linears = eligible_linears(module)
    batches = _batches(tiny_emb, calibration, ["input_ids", "attention_mask", "token_type_ids"], 8, 32)
    inv, _ = _plan(module, linears, batches, Int8Static(smooth=0.8))
    assert inv
    _apply_scales(module, linears, inv)
    batch = tiny_emb.encode(sentences)
    with torch.no_grad():
        torch.testing.assert_close(module(**batch).last_hidden_state, tiny_emb(**batch), atol=1e-4, rtol=1e-4)


def test_int8_nncf_openvino_ir(tiny_clf, tmp_path, sentences, calibration):
    config = Int8Nncf(preset="mixed", samples=8)
    q = leanlm.quantize(tiny_clf, config, QuantContext(calibration=calibration, max_length=32))
    info = q.record.extra["int8-nncf"]
    assert q.backend == "openvino" and q.record.weights == "model.xml"
    assert info["calibration_texts"] == 8 and info["fake_quantize_ops"] > 0
    assert info["int8_linears"] == 12 and info["float_linears"] == []  # 2 layers x 6 linears; heads skipped
    _check(tiny_clf, q, config, sentences, tmp_path, 20.0)
    assert {p.name for p in (tmp_path / "q").iterdir()} >= {"model.xml", "model.bin"}


def test_int8_nncf_keep_float(tiny_emb, calibration):
    keep = "encoder.layer.1.output.dense"
    q = leanlm.quantize(tiny_emb, Int8Nncf(keep_float=(keep,)), calibration=calibration)
    assert q.record.extra["int8-nncf"]["float_linears"] == [keep]
    with pytest.raises(UnsupportedError, match="keep_float names no eligible linear layer"):
        leanlm.quantize(tiny_emb, Int8Nncf(keep_float=("encoder.layer.9.output.dense",)), calibration=calibration)
    with pytest.raises(UnsupportedError, match="no eligible linear layers"):
        leanlm.quantize(tiny_emb, Int8Nncf(skip=("layer", "pooler")), calibration=calibration)
    with pytest.raises(ConfigError, match="needs calibration texts"):
        leanlm.quantize(tiny_emb, Int8Nncf())


def test_int8_nncf_refuses_decoders(tiny_lm, calibration):
    with pytest.raises(UnsupportedError, match="supports encoders"):
        leanlm.quantize(tiny_lm, Int8Nncf(), calibration=calibration)


def test_nncf_ignored_scope_patterns():
    import re

    pats = module_pattern(["encoder.layer.1.output.dense"], ["classifier", "pooler"])
    hit = lambda name: any(re.fullmatch(p, name) for p in pats)  # noqa: E731
    assert hit("__module.encoder.layer.1.output.dense/aten::linear/MatMul")
    assert hit("__module.bert.pooler.dense/aten::linear/MatMul") and hit("__module.classifier/aten::linear/MatMul")
    assert not hit("__module.encoder.layer.1.output.dense2/aten::linear/MatMul")
    assert not hit("__module.encoder.layer.11.output.dense/aten::linear/MatMul")
    assert not hit("__module.bert.encoder.layer.0.attention.self.query/aten::linear/MatMul")


def test_static_needs_calibration(tiny_emb):
    with pytest.raises(ConfigError, match="needs calibration texts"):
        leanlm.quantize(tiny_emb, Int8Static())
    with pytest.raises(ConfigError, match="needs calibration texts"):
        leanlm.quantize(tiny_emb, Int8Static(), calibration=["too", "few"])


def test_refuses_quantized_and_unsupported_models(tiny_emb, tiny_lm, calibration):
    q = leanlm.quantize(tiny_emb, Int8Dynamic(backend="onnxruntime"))
    with pytest.raises(UnsupportedError, match="already quantized"):
        leanlm.quantize(q, Int8Static(), calibration=calibration)
    with pytest.raises(UnsupportedError, match="encoders"):
        leanlm.quantize(tiny_lm, Int8Dynamic(backend="onnxruntime"))
    with pytest.raises(UnsupportedError, match="no eligible linear layers"):
        leanlm.quantize(tiny_emb, Int8Static(skip=("layer", "pooler")), calibration=calibration)
    with pytest.raises(UnsupportedError, match="exclude_nodes not in the graph"):
        leanlm.quantize(tiny_emb, Int8Static(exclude_nodes=("/no/such/MatMul",)), calibration=calibration)


@pytest.mark.parametrize("make,match", [
    (lambda: Int8Dynamic(backend="tensorrt"), "backend"),
    (lambda: Int8Dynamic(per_channel=False), "per_channel"),
    (lambda: Int8Dynamic(embeddings=True), "embeddings"),
    (lambda: Int8Static(backend="torch"), "backend"),
    (lambda: Int8Static(range_method="kl"), "range_method"),
    (lambda: Int8Static(percentile=50.0), "percentile"),
    (lambda: Int8Static(samples=4), "samples"),
    (lambda: Int8Static(activations="int4"), "activations"),
    (lambda: Int8Static(op_types=()), "op_types"),
    (lambda: Int8Static(op_types=("MatMul", "Conv3D")), "Conv3D"),
    (lambda: Int8Static(exclude_nodes=("",)), "exclude_nodes"),
    (lambda: Int8Static(smooth=1.5), "smooth"),
    (lambda: Int8Static(min_sqnr_db=-1.0), "min_sqnr_db"),
    (lambda: Int8Static(precision="fp8"), "precision"),
    (lambda: BaseConfig.from_dict({"type": "int8-static", "calib": "minmax"}), "unknown option"),
    (lambda: Int8Nncf(samples=2), "samples"),
    (lambda: Int8Nncf(preset="fast"), "preset"),
    (lambda: Int8Nncf(smooth=-0.5), "smooth"),
    (lambda: Int8Nncf(keep_float=("",)), "keep_float"),
    (lambda: Int8Nncf(precision="int4"), "precision"),
    (lambda: Int8Nncf(max_drop=-1.0), "max_drop"),
    (lambda: Int8Nncf(max_float_layers=-1), "max_float_layers"),
])
def test_invalid_options(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_configs_round_trip_json():
    for config in (Int8Dynamic(backend="onnxruntime", per_channel=False),
                   Int8Static(range_method="entropy", op_types=("MatMul", "Gather"), exclude_nodes=("/a/MatMul",)),
                   Int8Nncf(preset="mixed", keep_float=("encoder.layer.0.output.dense",), smooth=0.0)):
        assert BaseConfig.from_json(config.to_json()) == config


def test_int8_nncf_accuracy_guard_returns_layers_to_float(tiny_clf, calibration):
    # probe: agreement (points) with the float model's predictions; a budget of 0 with random
    # weights forces the guard to step, one layer at a time, up to max_float_layers
    ref = tiny_clf.predict(calibration)
    probe = lambda m: 100.0 * sum(a == b for a, b in zip(m.predict(calibration), ref)) / len(ref)  # noqa: E731
    q = leanlm.quantize(tiny_clf, Int8Nncf(max_drop=0.0, max_float_layers=2, samples=8),
                        QuantContext(calibration=calibration, max_length=32, evaluate=probe))
    guard = q.record.extra["int8-nncf"]["accuracy_guard"]
    assert guard["reference_score"] == 100.0 and 1 <= len(guard["steps"]) <= 3
    last = guard["steps"][-1]
    assert guard["budget_met"] == (last["score"] >= 100.0)
    assert sorted(last["float_layers"]) == q.record.extra["int8-nncf"]["float_linears"]
    if not guard["budget_met"]:
        assert len(last["float_layers"]) == 2
    with pytest.raises(ConfigError, match="max_drop needs an evaluate probe"):
        leanlm.quantize(tiny_clf, Int8Nncf(max_drop=0.5), calibration=calibration)
