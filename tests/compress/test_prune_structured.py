"""Structurally pruned models on every path: composition, ONNX, OpenVINO, int8, the fast decoder,
GGUF, the CLI, and the errors a user can make."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import leanlm
from leanlm.compress.prune import PruneContext, prune, prune_
from leanlm.compress.prune._importance import blocks, param_count
from leanlm.compress.prune.heads import HeadPruning
from leanlm.compress.prune.layers import LayerDrop
from leanlm.compress.prune.neurons import FfnPruning
from leanlm.errors import ConfigError, UnsupportedError

PROMPT = "The capital of France is Paris. The capital of Germany is"


def outputs(model, texts):
    return model(**model.encode(texts, max_length=32)).float()


@pytest.fixture(scope="module")
def pruned_clf(tiny_clf):
    """heads 50% (uneven across layers) + FFN 50%: the benchmark student's shape, on the tiny encoder."""
    m = prune(tiny_clf, HeadPruning(heads={0: [1, 3], 1: [0]}))
    return prune_(m, FfnPruning(0.5, score="magnitude"))


@pytest.fixture(scope="module")
def pruned_lm(tiny_lm):
    m = prune(tiny_lm, HeadPruning(heads={0: [0, 1]}))
    return prune_(m, FfnPruning(0.5, score="magnitude", multiple_of=8, scope="layer"))


@pytest.mark.parametrize("order", [("heads", "ffn", "layers"), ("layers", "ffn", "heads")])
def test_composition_with_save_load_between(tiny_clf, calibration, tmp_path, sentences, order):
    steps = {"heads": HeadPruning(0.5), "ffn": FfnPruning(0.5), "layers": LayerDrop(count=1, strategy="even")}
    ctx = PruneContext(calibration=calibration, labels=[i % 2 for i in range(16)], max_length=32)
    m = tiny_clf
    for i, name in enumerate(order):
        m = prune(m, steps[name], ctx)
        m.save(tmp_path / str(i))
        m = leanlm.load(tmp_path / str(i))
    assert [t["type"] for t in m.record.techniques] == list(order)
    bs = blocks(m.module)
    assert len(bs) == 1 and bs[0].width < 256 and bs[0].heads < 4
    assert param_count(m.module) < param_count(tiny_clf.module)
    assert torch.isfinite(outputs(m, sentences)).all()


def test_onnx_and_openvino_match_torch(pruned_clf, sentences):
    from leanlm.runtime.convert import convert
    from leanlm.runtime.onnx_export import exported, verify_onnx
    from leanlm.runtime.openvino import torch_graph

    with exported(pruned_clf) as (path, info):  # the export checks itself against PyTorch
        assert verify_onnx(path, pruned_clf) < 1e-3
    assert torch_graph(pruned_clf) is not None  # verified against PyTorch inside
    batch = pruned_clf.encode(sentences)
    ov = convert(pruned_clf, "openvino")
    torch.testing.assert_close(ov(**batch), pruned_clf(**batch), atol=1e-4, rtol=1e-4)


def test_int8_after_pruning(pruned_clf, tiny_emb, calibration, sentences):
    from leanlm.compress.quantize.int8_dynamic import Int8Dynamic
    from leanlm.compress.quantize.nncf_static import Int8Nncf

    q = leanlm.quantize(pruned_clf, Int8Dynamic())
    ref, out = outputs(pruned_clf, sentences), outputs(q, sentences)
    assert torch.isfinite(out).all() and torch.nn.functional.cosine_similarity(out, ref).min() > 0.9
    emb = prune(tiny_emb, FfnPruning(0.5, score="magnitude"))
    qn = leanlm.quantize(emb, Int8Nncf(), calibration=calibration, max_length=32)
    cos = torch.nn.functional.cosine_similarity(outputs(qn, sentences).flatten(1), outputs(emb, sentences).flatten(1))
    assert cos.min() > 0.95


def _hf_greedy(model, n):
    ids = model.tokenizer(PROMPT, return_tensors="pt").input_ids
    out = model.module.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, ids.shape[1]:].tolist()


def test_fast_decoder_matches_hf_greedy(pruned_lm):
    from leanlm.generate import generate_result
    from leanlm.generate.fast import fast_decoder

    dropped = prune(pruned_lm, LayerDrop(keep=(1,)))
    for m in (pruned_lm, dropped):
        fast = generate_result(m, PROMPT, max_new_tokens=8, stop_on_eos=False, fast=True, compile=False,
                               dtype="float32")
        assert fast.token_ids == _hf_greedy(m, 8)
        dec = fast_decoder(m, dtype="float32", compile=False)
        ids = m.tokenizer(PROMPT, return_tensors="pt").input_ids[0]
        dec.reset(64)
        with torch.no_grad():
            ref = m.module(ids[None]).logits[0].float()
        torch.testing.assert_close(dec.forward(ids, all_logits=True), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.integration
def test_compiled_fast_decoder_on_pruned_layers(pruned_lm):
    from leanlm.generate import generate_result

    fast = generate_result(pruned_lm, PROMPT, max_new_tokens=6, stop_on_eos=False, fast=True, dtype="float32")
    assert fast.token_ids == _hf_greedy(pruned_lm, 6)


def test_gguf_writes_per_layer_widths(pruned_lm, tmp_path):
    pytest.importorskip("gguf", reason="GGUF export needs the gguf package")
    from leanlm.export.gguf import export_gguf, permute, read_gguf

    path = export_gguf(pruned_lm, tmp_path / "p.gguf", "f32")
    r = read_gguf(path, dequantize=True)
    meta = r["metadata"]
    assert meta["general.architecture"] == "deci"
    assert meta["deci.attention.head_count"] == [2, 4] and meta["deci.attention.head_count_kv"] == [1, 2]
    assert meta["deci.feed_forward_length"] == 96 and meta["deci.attention.key_length"] == 16
    assert r["tensors"]["blk.0.attn_q.weight"]["shape"] == [32, 64]
    assert r["tensors"]["blk.0.ffn_down.weight"]["shape"] == [64, 96]
    q = pruned_lm.module.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    np.testing.assert_allclose(r["arrays"]["blk.0.attn_q.weight"], permute(q, 2))


def test_gguf_runs_in_llama_cpp(pruned_lm, tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (optional extra)")
    from leanlm.export.gguf import export_gguf
    from llama_cpp import Llama

    llm = Llama(str(export_gguf(pruned_lm, tmp_path / "p.gguf", "f32")), verbose=False)
    assert len(llm.tokenize(b"hello")) > 0


@pytest.mark.parametrize("make,match", [
    (lambda: HeadPruning(0.0), "ratio"),
    (lambda: HeadPruning(1.0), "ratio"),
    (lambda: FfnPruning(-0.1), "ratio"),
    (lambda: FfnPruning(1.5), "ratio"),
    (lambda: HeadPruning(0.5, min_heads=0), "min_heads"),
    (lambda: HeadPruning(0.5, score="random"), "score"),
    (lambda: HeadPruning(heads="0:x"), "heads"),
    (lambda: FfnPruning(0.5, scope="model"), "scope"),
    (lambda: LayerDrop(), "exactly one"),
    (lambda: LayerDrop(ratio=1.0), "ratio"),
    (lambda: LayerDrop(keep=(0, 0)), "distinct"),
])
def test_invalid_options(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_refusals(tiny_clf, tiny_lm, calibration):
    with pytest.raises(ConfigError, match="every head of layer 1"):
        prune(tiny_clf, HeadPruning(heads={1: [0, 1, 2, 3]}))
    with pytest.raises(ConfigError, match="whole groups"):
        prune(tiny_lm, HeadPruning(heads={0: [1]}))  # query head 1 shares KV head 0 with head 0
    with pytest.raises(ConfigError, match="does not exist"):
        prune(tiny_clf, HeadPruning(heads={5: [0]}))
    with pytest.raises(ConfigError, match="needs calibration texts"):
        prune(tiny_clf, FfnPruning(0.5))
    with pytest.raises(ConfigError, match="cannot remove 2 of 2"):
        prune(tiny_clf, LayerDrop(count=2, strategy="even"))
    with pytest.raises(ConfigError, match="cannot remove"):
        prune(tiny_clf, HeadPruning(0.9, min_heads=2, score="magnitude"))
    from leanlm.compress.quantize.int8_dynamic import Int8Dynamic

    q = leanlm.quantize(tiny_clf, Int8Dynamic())
    with pytest.raises(UnsupportedError, match="already quantized"):
        prune_(q, HeadPruning(0.5, score="magnitude"))


def test_cli_end_to_end(tiny_clf, tmp_path):
    from leanlm.cli import app

    src = tiny_clf.save(tmp_path / "tiny")
    r = CliRunner().invoke(app, ["prune", str(src), str(tmp_path / "out"), "heads", "--ratio", "0.5", "--rescale",
                                 "--calibration", "movie-snippets", "--calibration-size", "16", "--max-length", "32"])
    assert r.exit_code == 0, r.output
    assert "params" in r.output and "->" in r.output and "MB weights" in r.output
    back = leanlm.load(tmp_path / "out")
    assert sum(b.heads for b in blocks(back.module)) == 4
    assert back.record.extra["heads"]["calibration"] == {"dataset": "movie-snippets", "texts": 16, "labels": True}
    listed = CliRunner().invoke(app, ["prune", "--list"])
    assert listed.exit_code == 0 and "--min-heads" in listed.output


def test_cli_unknown_method_exits_2_and_writes_nothing(tmp_path):
    r = subprocess.run([sys.executable, "-m", "leanlm.cli", "prune", "tiny", str(tmp_path / "out"), "hedas"],
                       capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert r.returncode == 2
    err = r.stderr.strip()
    assert "Did you mean 'heads'" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


@pytest.mark.integration
def test_minilm_student_shape(minilm, sentences):
    # the benchmark student: heads 50% + FFN 50% + layers 6 -> 3, from real MiniLM-L6 weights
    from leanlm.compress.quantize.cli import calibration_texts

    ctx = PruneContext(calibration=calibration_texts("movie-snippets", 32), max_length=48)
    m = prune(minilm, HeadPruning(0.5), ctx)
    prune_(m, FfnPruning(0.5), ctx)
    prune_(m, LayerDrop(count=3, strategy="even"), ctx)
    assert len(blocks(m.module)) == 3 and param_count(m.module) < 0.8 * param_count(minilm.module)
    ref, out = outputs(minilm, sentences).mean(1), outputs(m, sentences).mean(1)
    assert torch.isfinite(out).all() and torch.nn.functional.cosine_similarity(ref, out).mean() > 0.3
