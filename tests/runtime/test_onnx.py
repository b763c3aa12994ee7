"""ONNX export and the ONNX Runtime backend, on tiny real encoders (plus one MiniLM integration test)."""
from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch

import leanlm
from leanlm.errors import ArtifactError, UnsupportedError
from leanlm.runtime.convert import convert
from leanlm.runtime.onnx_export import export_onnx, optimize_onnx
from leanlm.runtime.onnxruntime import OrtRunner, thread_count


def _run_onnx(path, batch):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return torch.from_numpy(sess.run(None, {k: v.numpy() for k, v in batch.items() if k in names})[0])


@pytest.mark.parametrize("fixture,output", [("tiny_clf", "logits"), ("tiny_emb", "last_hidden_state")])
def test_export_is_valid_dynamic_and_matches_torch(fixture, output, request, tmp_path, sentences):
    model = request.getfixturevalue(fixture)
    path = export_onnx(model, tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [o.name for o in proto.graph.output] == [output]
    assert proto.opset_import[0].version >= 17
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_param  # batch and sequence are symbolic
    # shapes never seen at export time: batch 8 x long, batch 1 x short
    for texts in (sentences, sentences[:1]):
        batch = model.encode(texts, max_length=48)
        torch.testing.assert_close(_run_onnx(path, batch), model(**batch), atol=1e-4, rtol=1e-4)


def test_dynamo_exporter(tiny_emb, tmp_path, sentences):
    path = export_onnx(tiny_emb, tmp_path / "d.onnx", exporter="dynamo")  # verified against torch inside
    batch = tiny_emb.encode(sentences[:5], max_length=40)
    torch.testing.assert_close(_run_onnx(path, batch), tiny_emb(**batch), atol=1e-4, rtol=1e-4)


def test_export_leaves_the_model_untouched(tiny_emb, tmp_path):
    impl = tiny_emb.module.config._attn_implementation
    export_onnx(tiny_emb, tmp_path / "m.onnx")
    assert tiny_emb.module.config._attn_implementation == impl and tiny_emb.backend == "torch"


def test_fused_graph_has_attention_and_matches(tiny_clf, tmp_path, sentences):
    path = export_onnx(tiny_clf, tmp_path / "m.onnx")
    fused, stats = optimize_onnx(path, tiny_clf, tmp_path / "f.onnx")
    assert stats.get("Attention") == 2 and stats.get("SkipLayerNormalization")
    batch = tiny_clf.encode(sentences)
    torch.testing.assert_close(_run_onnx(fused, batch), tiny_clf(**batch), atol=1e-4, rtol=1e-4)


def test_export_refusals(tiny_lm, tiny_emb, tmp_path):
    with pytest.raises(UnsupportedError, match="encoders"):
        export_onnx(tiny_lm, tmp_path / "lm.onnx")
    with pytest.raises(UnsupportedError, match="opset"):
        export_onnx(tiny_emb, tmp_path / "m.onnx", opset=13)
    with pytest.raises(UnsupportedError, match="exporter"):
        export_onnx(tiny_emb, tmp_path / "m.onnx", exporter="magic")
    from leanlm.compress.quantize import Int8Dynamic

    q = leanlm.quantize(tiny_emb, Int8Dynamic())
    with pytest.raises(UnsupportedError, match="float weights"):
        export_onnx(q, tmp_path / "q.onnx")


def test_convert_onnxruntime_round_trip(tiny_clf, tmp_path, sentences):
    ort_model = convert(tiny_clf, "onnxruntime")
    assert tiny_clf.backend == "torch" and tiny_clf.module is not None  # original untouched
    assert ort_model.backend == "onnxruntime" and ort_model.module is None
    rt = ort_model.record.extra["runtime"]
    assert rt["backend"] == "onnxruntime" and rt["exporter"] == "torchscript" and rt["fused"]["Attention"] == 2
    batch = tiny_clf.encode(sentences)
    out = ort_model(**batch)
    torch.testing.assert_close(out, tiny_clf(**batch), atol=1e-4, rtol=1e-4)
    assert ort_model.predict(sentences) == tiny_clf.predict(sentences)

    ort_model.save(tmp_path / "m")
    assert (tmp_path / "m" / "model.onnx").exists() and (tmp_path / "m" / "config.json").exists()
    back = leanlm.load(tmp_path / "m")
    assert back.backend == "onnxruntime" and back.record.extra["runtime"] == rt
    assert torch.equal(back(**batch), out)
    assert torch.equal(back.clone()(**batch), out)
    back.save(tmp_path / "again")  # re-saving a loaded model copies its graph
    assert torch.equal(leanlm.load(tmp_path / "again")(**batch), out)


def test_runner_feeds_only_graph_inputs(tiny_emb, sentences):
    m = convert(tiny_emb, "onnxruntime", fuse=False)
    batch = tiny_emb.encode(sentences)
    ref = m(**batch)
    no_types = {k: v for k, v in batch.items() if k != "token_type_ids"}  # defaults to zeros
    assert torch.equal(m(**no_types), ref)
    assert torch.equal(m(**batch, extra=torch.ones(1)), ref)  # unknown inputs are ignored
    with pytest.raises(ArtifactError, match="needs input"):
        m(input_ids=batch["input_ids"])


def test_convert_refusals(tiny_emb):
    with pytest.raises(UnsupportedError, match="openvino"):
        convert(tiny_emb, "onnxruntime", precision="bf16")
    with pytest.raises(UnsupportedError, match="Did you mean 'openvino'"):
        convert(tiny_emb, "openvin")
    m = convert(tiny_emb, "onnxruntime")
    with pytest.raises(UnsupportedError, match="PyTorch model"):
        convert(m, "openvino")


def test_threads_from_environment(monkeypatch, tiny_emb):
    monkeypatch.setenv("LEANLM_THREADS", "1")
    assert thread_count() == 1
    m = convert(tiny_emb, "onnxruntime")
    assert isinstance(m.runner, OrtRunner) and m.runner.threads == 1
    monkeypatch.setenv("LEANLM_THREADS", "lots")
    with pytest.raises(UnsupportedError, match="LEANLM_THREADS"):
        thread_count()
    monkeypatch.delenv("LEANLM_THREADS")
    assert thread_count() >= 1


@pytest.mark.integration
def test_minilm_onnxruntime_matches_torch(minilm, sentences):
    m = convert(minilm, "onnxruntime")
    assert m.record.extra["runtime"]["fused"]["Attention"] == 6
    batch = minilm.encode(sentences)
    ref, out = minilm(**batch), m(**batch)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(out[mask], ref[mask], atol=1e-3, rtol=1e-3)
    e_ref, e_out = leanlm.embed(minilm, sentences), leanlm.embed(m, sentences)
    assert float((e_ref * e_out).sum(1).min()) > 0.99999
