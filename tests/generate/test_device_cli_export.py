"""Device choice, the generate / eval-lm CLI, and GGUF export read back with the gguf package."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from leanlm.errors import ArtifactError, LeanlmError, UnsupportedError
from leanlm.runtime.device import pick_device, to_device


def test_pick_device_on_cpu():
    assert pick_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected
    assert pick_device(" CPU ").type == "cpu"
    with pytest.raises(UnsupportedError, match="Valid"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UnsupportedError, match="CUDA"):
            pick_device("cuda")


def test_to_device_cpu_keeps_fp32(tiny_lm):
    m = to_device(tiny_lm, "cpu")
    assert m.device.type == "cpu" and next(m.module.parameters()).dtype == torch.float32


@pytest.fixture(scope="module")
def tiny_dir(tiny_lm, tmp_path_factory):
    return tiny_lm.save(tmp_path_factory.mktemp("models") / "tiny")


def test_cli_generate_and_errors(tiny_dir):
    from leanlm.cli import app

    runner = CliRunner()
    ok = runner.invoke(app, ["generate", str(tiny_dir), "Hello there", "--max-new-tokens", "4", "--device", "cpu",
                             "--stats"])
    assert ok.exit_code == 0, ok.output
    assert "prefill" in ok.output
    streamed = runner.invoke(app, ["generate", str(tiny_dir), "Hello there", "--max-new-tokens", "4", "--stream",
                                   "--fast", "--no-compile", "--dtype", "float32"])
    assert streamed.exit_code == 0, streamed.output
    spec = runner.invoke(app, ["generate", str(tiny_dir), "Hello there", "--max-new-tokens", "5", "--draft",
                               "layers-2", "--stats"])
    assert spec.exit_code == 0, spec.output
    assert "acceptance" in spec.output
    bad = runner.invoke(app, ["generate", str(tiny_dir), "Hello", "--top-p", "2"])
    assert isinstance(bad.exception, LeanlmError) and "top_p" in str(bad.exception)
    bad = runner.invoke(app, ["generate", str(tiny_dir), "Hello", "--draft", "self-int4"])
    assert isinstance(bad.exception, LeanlmError) and "--fast" in str(bad.exception)


def test_cli_eval_lm_with_reference(tiny_dir, tmp_path):
    from leanlm.cli import app

    out = tmp_path / "lm.json"
    r = CliRunner().invoke(app, ["eval-lm", str(tiny_dir), "--reference", str(tiny_dir), "--tokens", "200",
                                 "--window", "64", "--stride", "32", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "KLD 0.00000" in r.output and out.exists()


@pytest.mark.parametrize("kind,tol", [("f32", 1e-6), ("q8_0", 2e-2), ("q4_0", 0.25)])
def test_gguf_export_reads_back(tiny_lm, tmp_path, kind, tol):
    from leanlm.export.gguf import export_gguf, permute, read_gguf

    path = export_gguf(tiny_lm, tmp_path / f"tiny-{kind}.gguf", kind)
    info = read_gguf(path, dequantize=True)
    meta, tensors, arrays = info["metadata"], info["tensors"], info["arrays"]
    cfg = tiny_lm.module.config
    assert meta["general.architecture"] == "llama"
    assert meta["llama.block_count"] == cfg.num_hidden_layers
    assert meta["llama.attention.head_count_kv"] == cfg.num_key_value_heads
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.eos_token_id"] == tiny_lm.tokenizer.eos_token_id
    assert "<|im_start|>" in meta["tokenizer.chat_template"]
    assert len(tensors) == 2 + 9 * cfg.num_hidden_layers  # tied output: no output.weight
    layer = tiny_lm.module.model.layers[1]
    want = {
        "blk.1.attn_q.weight": permute(layer.self_attn.q_proj.weight.detach().numpy(), cfg.num_attention_heads),
        "blk.1.attn_k.weight": permute(layer.self_attn.k_proj.weight.detach().numpy(), cfg.num_key_value_heads),
        "blk.1.ffn_down.weight": layer.mlp.down_proj.weight.detach().numpy(),
        "blk.1.ffn_norm.weight": layer.post_attention_layernorm.weight.detach().numpy(),
    }
    for name, w in want.items():
        assert arrays[name].shape == w.shape
        assert np.abs(arrays[name] - w).max() <= tol * np.abs(w).max() + 1e-7, name
    with pytest.raises(ArtifactError):
        export_gguf(tiny_lm, path, kind)


def test_gguf_export_rejects_bad_input(tiny_lm, tiny_clf, tmp_path):
    from leanlm.export.gguf import export_gguf

    with pytest.raises(LeanlmError, match="q8_0"):
        export_gguf(tiny_lm, tmp_path / "x.gguf", "q8_1")
    with pytest.raises(UnsupportedError):
        export_gguf(tiny_clf, tmp_path / "y.gguf", "f32")


def test_llamacpp_runs_our_export_and_matches_torch(tiny_lm, tmp_path):
    # optional peer: skipped where llama-cpp-python is not installed (CI); `make llamacpp` builds it
    pytest.importorskip("llama_cpp")
    import torch

    from leanlm.export.gguf import export_gguf
    from leanlm.runtime.llamacpp import LlamaCpp

    path = export_gguf(tiny_lm, tmp_path / "tiny-f32.gguf", "f32")
    ids = [5, 17, 42, 7, 99, 3]
    peer = LlamaCpp(path, n_ctx=64, threads=1, logits_all=True)
    got = peer.logits(ids)
    with torch.inference_mode():
        want = tiny_lm.module(torch.tensor([ids])).logits[0].float()
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)
    tokens, prefill_s, decode_s = peer.greedy(ids, 4)
    assert len(tokens) == 4 and tokens[0] == int(want[-1].argmax()) and prefill_s > 0
    with pytest.raises(UnsupportedError, match="logits_all"):
        LlamaCpp(path, n_ctx=64, threads=1).logits(ids)
