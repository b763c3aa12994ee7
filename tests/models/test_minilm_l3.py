"""minilm-l3: paraphrase-MiniLM-L3-v2 rebuilt as a BertModel from its shipped ONNX graph."""
import numpy as np
import pytest

import leanlm
from leanlm.errors import ArtifactError
from leanlm.models.registry import BUNDLED, MINILM_L3_ONNX, MINILM_L3_PACKAGE

SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.",
             "The stock market fell sharply today, and analysts blamed the rate rise.", "Fine."]


def test_minilm_l3_is_registered():
    spec = BUNDLED["minilm-l3"]
    assert spec.kind == "encoder" and spec.package == MINILM_L3_PACKAGE


def test_unknown_graph_is_refused():
    import onnx
    from onnx import TensorProto, helper

    from leanlm.models.onnx_import import bert_from_onnx

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.checker.check_graph(graph)
    with pytest.raises(ArtifactError):
        bert_from_onnx(graph)


@pytest.mark.integration
def test_minilm_l3_matches_its_onnx_graph():
    import onnxruntime as ort

    from leanlm.models.onnx_import import packaged_file

    m = leanlm.load("minilm-l3")
    cfg = m.module.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (3, 384, 12, 1536)
    assert m.tokenizer.vocab_size == 30522 and m.task == "feature-extraction"
    session = ort.InferenceSession(str(packaged_file(MINILM_L3_PACKAGE, MINILM_L3_ONNX)),
                                   providers=["CPUExecutionProvider"])
    batch = m.encode(SENTENCES)
    pooled = session.run(["461"], {k: batch[k].numpy() for k in ("input_ids", "attention_mask")})[0]
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    ours = leanlm.embed(m, SENTENCES)
    np.testing.assert_allclose((ours * pooled).sum(1), 1.0, atol=1e-5)
    sim = ours @ ours.T
    assert sim[0, 1] > 0.5 and sim[0, 2] < 0.3  # and the embeddings mean something


def test_minilm_l3_is_listed():
    from typer.testing import CliRunner

    from leanlm.cli import app

    out = CliRunner().invoke(app, ["models"], terminal_width=200)
    assert out.exit_code == 0 and "minilm-l3" in out.output
