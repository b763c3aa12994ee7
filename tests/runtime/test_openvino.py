"""OpenVINO backend on tiny real encoders: conversion, precisions, ONNX and IR round trips."""
from __future__ import annotations

import shutil

import pytest
import torch

import leanlm
from leanlm.artifact import LeanModel
from leanlm.errors import UnsupportedError
from leanlm.runtime.convert import convert
from leanlm.runtime.onnxruntime import GraphSource
from leanlm.runtime.openvino import OvRunner, effective_precision


def test_fp32_matches_torch_and_round_trips(tiny_clf, tmp_path, sentences):
    m = convert(tiny_clf, "openvino")
    assert m.backend == "openvino" and tiny_clf.backend == "torch"
    rt = m.record.extra["runtime"]
    assert rt["precision"] == "fp32" and rt["hint"] == "latency"
    batch = tiny_clf.encode(sentences)
    out = m(**batch)
    torch.testing.assert_close(out, tiny_clf(**batch), atol=1e-4, rtol=1e-4)
    assert m.predict(sentences) == tiny_clf.predict(sentences)
    m.save(tmp_path / "m")
    back = leanlm.load(tmp_path / "m")
    assert back.backend == "openvino" and back.runner.precision == "fp32"
    assert torch.equal(back(**batch), out)
    assert torch.equal(m.clone()(**batch), out)


def test_bf16_is_close(tiny_emb, sentences):
    m = convert(tiny_emb, "openvino", precision="bf16")
    batch = tiny_emb.encode(sentences)
    ref, out = tiny_emb(**batch), m(**batch)
    cos = torch.nn.functional.cosine_similarity(out.flatten(1), ref.flatten(1))
    assert cos.min() > 0.999
    assert m.runner.precision == effective_precision("bf16")  # bf16, or fp32 on a CPU without it


def test_throughput_hint(tiny_emb, sentences):
    m = convert(tiny_emb, "openvino", hint="throughput")
    batch = tiny_emb.encode(sentences)
    torch.testing.assert_close(m(**batch), tiny_emb(**batch), atol=1e-4, rtol=1e-4)
    assert m.record.extra["runtime"]["hint"] == "throughput"


def test_reads_and_saves_openvino_ir(tiny_emb, tmp_path, sentences):
    import openvino as ov

    m = convert(tiny_emb, "openvino")
    onnx_path = tmp_path / "g.onnx"
    onnx_path.write_bytes(m.runner.source.read())
    ov.save_model(ov.Core().read_model(str(onnx_path)), str(tmp_path / "ir" / "g.xml"), compress_to_fp16=False)
    runner = OvRunner(GraphSource(path=tmp_path / "ir" / "g.xml"), m.runner.config)
    ir_model = LeanModel(None, m.tokenizer, m.record, runner=runner)
    batch = tiny_emb.encode(sentences)
    out = ir_model(**batch)
    torch.testing.assert_close(out, m(**batch), atol=1e-5, rtol=1e-5)
    ir_model.save(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.xml").exists() and (tmp_path / "saved" / "model.bin").exists()
    back = leanlm.load(tmp_path / "saved")
    assert back.record.weights == "model.xml"
    assert torch.equal(back(**batch), out)
    shutil.rmtree(tmp_path / "ir")
    with pytest.raises(leanlm.LeanlmError, match="changed or vanished"):
        ir_model.save(tmp_path / "gone")


def test_refusals(tiny_emb):
    with pytest.raises(UnsupportedError, match="precision"):
        convert(tiny_emb, "openvino", precision="int3")
    with pytest.raises(UnsupportedError, match="hint"):
        convert(tiny_emb, "openvino", hint="fastest")


def test_static_shapes(tiny_emb, tmp_path, sentences):
    from leanlm.runtime.openvino import with_shapes

    m = convert(tiny_emb, "openvino")
    batch = tiny_emb.encode(sentences, max_length=16, padding="max_length")
    fixed = with_shapes(m, [(8, 16)])
    assert fixed.record.extra["runtime"]["shapes"] == [[8, 16]] and "shapes" not in m.record.extra["runtime"]
    out = fixed(**batch)  # the static graph
    torch.testing.assert_close(out, m(**batch), atol=1e-5, rtol=1e-5)
    other = tiny_emb.encode(sentences[:3])  # any other shape: the dynamic graph
    torch.testing.assert_close(fixed(**other), m(**other), atol=1e-5, rtol=1e-5)
    fixed.save(tmp_path / "m")
    back = leanlm.load(tmp_path / "m")
    assert back.runner.shapes == ((8, 16),) and torch.equal(back(**batch), out)
    with pytest.raises(UnsupportedError, match="static shapes"):
        with_shapes(m, [(8, 0)])
    with pytest.raises(UnsupportedError, match="OpenVINO setting"):
        with_shapes(tiny_emb, [(8, 16)])


def test_pytorch_frontend_graph_in_memory_ir_round_trip(tiny_emb, tmp_path, sentences):
    from leanlm.runtime.openvino import IrSource, ov_model, torch_graph

    graph = torch_graph(tiny_emb)  # verified against PyTorch inside
    assert any(op.get_type_name() == "ScaledDotProductAttention" for op in graph.get_ops())
    m = ov_model(IrSource.from_model(graph), tiny_emb, {"graph": "openvino-pytorch-frontend"})
    assert m.record.weights == "model.xml" and m.runner.source.nbytes > 0
    batch = tiny_emb.encode(sentences)
    out = m(**batch)
    torch.testing.assert_close(out, tiny_emb(**batch), atol=1e-4, rtol=1e-4)
    m.save(tmp_path / "ir")
    back = leanlm.load(tmp_path / "ir")
    assert torch.equal(back(**batch), out) and torch.equal(m.clone()(**batch), out)


def test_pytorch_frontend_refuses_decoders(tiny_lm):
    from leanlm.runtime.openvino import torch_graph

    with pytest.raises(UnsupportedError, match="supports encoders"):
        torch_graph(tiny_lm)
