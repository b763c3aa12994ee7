"""Causal-LM pre-training: loss falls, and the result is a normal decoder directory (fast decoder,
eval-lm, GGUF); exact resume from a checkpoint; continued training from an existing model; errors."""
from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

import leanlm
from leanlm.config import lookup
from leanlm.errors import ArtifactError, ConfigError, DataError, UnsupportedError
from leanlm.train import causal_lm as clm
from leanlm.train.causal_lm import CausalLm
from leanlm.train.checkpoint import CHECKPOINT_FILE
from leanlm.train.loop import LoopConfig
from leanlm.train.pretrain import pretrain

ANIMALS = ["cat", "dog", "bird", "fox", "cow", "horse"]
PLACES = ["mat", "rug", "bed", "hill", "barn", "road"]
# ~1,000 words of regular text: a 2-layer model learns it in a few dozen steps
DOCS = [" ".join(f"The {a} sat on the {p}." for a, p in zip(ANIMALS[i % 6:] + ANIMALS[: i % 6], PLACES))
        for i in range(34)]
TRAIN, HELDOUT = DOCS[:30], DOCS[30:]
CONFIG = CausalLm(layers=2, hidden=64, heads=4, kv_heads=2, max_position=256, seq_len=32, batch_size=4)
LOOP = LoopConfig(epochs=2, lr=1e-2, patience=0, seed=1)  # 40 blocks of 32 tokens: 2 x 10 optimizer steps


def run(config, train, heldout, tok, out, loop, **kw):
    """The pretrain verb on the caller's own split -> (model, its held-out metrics)."""
    model = pretrain(config, train, out, tokenizer=tok, loop=loop, heldout=heldout, **kw)
    return model, model.record.metrics["pretrain"]


@pytest.fixture(scope="module")
def tok(tiny_lm):
    return tiny_lm.tokenizer  # SmolLM2's tokenizer


@pytest.fixture(scope="module")
def trained(tok, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain") / "tiny-llama"
    model, metrics = run(CONFIG, TRAIN, HELDOUT, tok, out, LOOP)
    return model, metrics, out


def test_registered_and_loss_falls(trained):
    assert lookup("pretrain", "causal-lm") is CausalLm
    model, m, _ = trained
    assert m["steps"] == 20 and m["train_tokens"] == 40 * 32
    # from ~ln(49152) = 10.8 at random init to a few nats on this regular text
    assert m["heldout_loss_start"] > 10 and m["heldout_loss"] < m["heldout_loss_start"] - 5
    assert m["heldout_perplexity"] == pytest.approx(math.exp(m["heldout_loss"]))
    history = model.record.training["result"]["history"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert model.record.metrics["heldout"]["loss"] == pytest.approx(m["heldout_loss"], abs=1e-6)  # rounded in "pretrain"


def test_saved_directory_is_a_normal_decoder(trained):
    model, _, out = trained
    loaded = leanlm.load(out)
    assert loaded.task == "causal-lm" and loaded.record.weights == "model.safetensors"
    assert loaded.record.techniques == [] and loaded.record.base_model == clm.FRESH_BASE
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    for a, b in zip(model.module.state_dict().values(), loaded.module.state_dict().values()):
        assert torch.equal(a, b)


def test_fast_decoder_greedy_equals_transformers_greedy(trained):
    from leanlm.generate import generate_result

    loaded = leanlm.load(trained[2])
    prompt = "The fox sat on the"
    ids = loaded.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        hf = loaded.module.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                                    min_new_tokens=12, pad_token_id=loaded.tokenizer.eos_token_id)
    hf_new = hf[0, ids.shape[1]:].tolist()
    fast = generate_result(loaded, prompt, max_new_tokens=12, stop_on_eos=False, fast=True, compile=False,
                           dtype="float32")
    assert fast.token_ids == hf_new


def test_eval_lm_perplexity_finite(trained, tmp_path):
    from leanlm.cli import app

    text = tmp_path / "heldout.txt"
    text.write_text("\n".join(HELDOUT))
    out = tmp_path / "lm.json"
    r = CliRunner().invoke(app, ["eval-lm", str(trained[2]), "--text-file", str(text), "--tokens", "150",
                                 "--window", "64", "--stride", "32", "--device", "cpu", "-o", str(out)])
    assert r.exit_code == 0, r.output
    ppl = json.loads(out.read_text())["perplexity"]
    assert math.isfinite(ppl) and 1 < ppl < trained[1]["heldout_perplexity_start"]


def test_gguf_export_readable_by_gguf(trained, tmp_path):
    import gguf

    from leanlm.export.gguf import export_gguf

    model = trained[0]
    path = export_gguf(model, tmp_path / "tiny.gguf", "f32")
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 2 + 9 * CONFIG.layers  # tied output head: no output.weight
    emb = model.module.get_input_embeddings().weight.detach().numpy()
    assert (tensors["token_embd.weight"].data.reshape(emb.shape) == emb).all()
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "llama"


def test_resume_from_checkpoint_gives_the_same_weights(trained, tok, tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt"
    loop = LoopConfig(**{**LOOP.to_dict(), "checkpoint_dir": str(ckpt), "checkpoint_every": 4})
    real = clm.train_loop

    class Killed(Exception):
        pass

    def kill(step, module):
        if step == 6:  # after the step-4 checkpoint, mid-epoch
            raise Killed()

    monkeypatch.setattr(clm, "train_loop", lambda *a, **k: real(*a, **k, hooks=[kill]))
    with pytest.raises(Killed):
        run(CONFIG, TRAIN, HELDOUT, tok, None, loop)
    assert (ckpt / CHECKPOINT_FILE).exists()
    monkeypatch.setattr(clm, "train_loop", real)
    resumed, _ = run(CONFIG, TRAIN, HELDOUT, tok, None, loop)  # a fresh start, as a new process would
    assert resumed.record.training["result"]["resumed_from"] == 4
    for (name, a), b in zip(trained[0].module.state_dict().items(), resumed.module.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_init_continues_an_existing_model(trained, tok):
    base = leanlm.load(trained[2])
    before = base.module.model.embed_tokens.weight.clone()
    model, m = run(CONFIG, TRAIN, HELDOUT, None, None, LoopConfig(max_steps=3, lr=1e-3, patience=0),
                               init=base)
    assert torch.equal(base.module.model.embed_tokens.weight, before)  # the caller's model is untouched
    assert m["steps"] == 3 and m["heldout_loss_start"] < 8  # starts from the trained weights, not random
    assert model.record.base_model == clm.FRESH_BASE and model.record.training["init"] == clm.FRESH_BASE
    assert model.tokenizer is base.tokenizer


@pytest.mark.parametrize("train,heldout,match", [
    ([], HELDOUT, "fewer than one block"),
    (["", "   "], HELDOUT, "0 tokens"),
    (["A cat."], HELDOUT, "fewer than one block"),
    (TRAIN, [""], "held-out text is empty"),
])
def test_too_little_text_is_one_line_data_error(tok, train, heldout, match):
    with pytest.raises(DataError, match=match) as e:
        run(CONFIG, train, heldout, tok, None, LOOP)
    assert "\n" not in str(e.value)


def test_config_and_input_errors(trained, tok, tiny_lm):
    for bad in (dict(hidden=60, heads=8), dict(heads=4, kv_heads=3), dict(seq_len=512, max_position=256),
                dict(hidden=12, heads=4), dict(batch_size=0)):
        with pytest.raises(ConfigError):
            CausalLm(**bad)
    assert CausalLm.from_dict(CONFIG.to_dict()) == CONFIG
    with pytest.raises(ArtifactError, match="already exists"):  # refused before any training
        run(CONFIG, TRAIN, HELDOUT, tok, trained[2], LOOP)
    with pytest.raises(UnsupportedError, match="context"):
        run(CausalLm(seq_len=4096, max_position=4096), TRAIN, HELDOUT, tok, None, LOOP,
                        init=leanlm.load(trained[2]))
