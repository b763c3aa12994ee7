"""OpenVINO decoder on the tiny real Llama: float tokens equal torch's, int8 stays close, speculative
rollback (masked cache slots) is exact, directories round-trip, the GenAI peer runs the same IR."""
from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

import leanlm
from leanlm.errors import ConfigError, LeanlmError, UnsupportedError
from leanlm.generate import GenerationConfig, generate_result

ov = pytest.importorskip("openvino", reason="the OpenVINO decoder needs openvino (pip install 'leanlm[openvino]')")
from leanlm.generate.openvino import IR_FILE, OpenVinoDecoder, ov_decoder, to_openvino  # noqa: E402

PROMPTS = ["Hello there, how are", "The capital of France is", "Once upon a time"]
GREEDY = GenerationConfig(max_new_tokens=10, stop_on_eos=False)


def _nncf():
    pytest.importorskip("nncf", reason="OpenVINO weight compression needs nncf (pip install 'leanlm[openvino]')")


@pytest.fixture(scope="module")
def ov_float(tiny_lm):
    return to_openvino(tiny_lm, OpenVinoDecoder(weights="none", tokenizer=False))


@pytest.fixture(scope="module")
def ov_int8(tiny_lm):
    _nncf()
    return to_openvino(tiny_lm, OpenVinoDecoder(weights="int8"))


@pytest.fixture(scope="module")
def int8_dir(ov_int8, tmp_path_factory):
    return ov_int8.save(tmp_path_factory.mktemp("ov") / "int8")


def test_float_greedy_tokens_and_logits_match_torch(tiny_lm, ov_float):
    assert ov_float.backend == "openvino" and tiny_lm.backend == "torch"
    for prompt in PROMPTS:
        assert generate_result(ov_float, prompt, GREEDY).token_ids == generate_result(tiny_lm, prompt, GREEDY).token_ids
    # whole-sequence scoring, right padded: valid positions equal PyTorch's logits
    enc = tiny_lm.tokenizer(PROMPTS[:2], padding=True, return_tensors="pt")
    got = ov_float.runner(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
    with torch.no_grad():
        ref = tiny_lm.module(**enc).logits
    valid = enc.attention_mask.bool()
    torch.testing.assert_close(got[valid], ref[valid], atol=1e-4, rtol=1e-4)


def test_decoder_api_prefill_step_and_all_logits(tiny_lm, ov_float):
    dec = ov_decoder(ov_float, threads=1)
    ids = tiny_lm.tokenizer(PROMPTS[0], return_tensors="pt").input_ids[0]
    last = dec.prefill(ids)
    assert last.shape == (tiny_lm.module.config.vocab_size,) and dec.pos == ids.numel()
    dec.reset(32)
    rows = dec.forward(ids, all_logits=True)  # logits_to_keep = T: every row, as verification needs
    assert rows.shape[0] == ids.numel()
    torch.testing.assert_close(rows[-1], last)
    nxt = dec.step(int(last.argmax()))
    assert torch.isfinite(nxt).all() and dec.pos == ids.numel() + 1
    r = dec.generate(PROMPTS[0], GREEDY)
    assert r.token_ids == generate_result(tiny_lm, PROMPTS[0], GREEDY).token_ids


class _NoisyDraft:
    """A draft on the target's own IR whose logits get noise: it disagrees often, so both caches
    really roll back (rejected slots masked) and the output must still be the target's own."""

    def __init__(self, dec):
        self.dec, self.gen, self.calls = dec, torch.Generator().manual_seed(0), 0

    def __getattr__(self, name):
        return getattr(self.dec, name)

    def forward(self, ids, all_logits=False):
        out = self.dec.forward(ids, all_logits)
        self.calls += 1
        if self.calls % 3:  # every third proposal is the target's own guess; the others are noise
            out = out + 3 * out.std() * torch.randn(out.shape, generator=self.gen)
        return out


def test_speculative_rollback_is_exact(ov_float):
    draft = _NoisyDraft(ov_float.runner.decoder(threads=1))  # a second compiled decoder, its own state
    cfg = GREEDY.replace(max_new_tokens=16, draft_tokens=3)
    drafted = accepted = 0
    for prompt in PROMPTS[:2]:
        spec = generate_result(ov_float, prompt, cfg, draft=draft)
        assert spec.token_ids == generate_result(ov_float, prompt, cfg).token_ids
        drafted, accepted = drafted + spec.drafted, accepted + spec.accepted
    assert 0 < accepted < drafted


def test_int8_weights_stay_close(tiny_lm, ov_int8):
    assert ov_int8.record.extra["runtime"]["weight_format"] == "INT8_ASYM"
    fp32 = ov_int8.runner.decoder(precision="fp32", kv_cache="f32")  # isolate the weight error
    ids = tiny_lm.tokenizer(PROMPTS[1], return_tensors="pt").input_ids[0]
    fp32.reset(ids.numel())
    got = fp32.forward(ids, all_logits=True)
    with torch.no_grad():
        ref = tiny_lm.module(input_ids=ids[None]).logits[0]
    kld = torch.nn.functional.kl_div(got.log_softmax(-1), ref.log_softmax(-1), log_target=True, reduction="batchmean")
    assert float(kld) < 1e-3
    # random tiny weights give nearly flat logits, so int8 may swap close neighbours: top-5, not top-1
    assert (got.topk(5, -1).indices == ref.argmax(-1)[:, None]).any(-1).all()
    assert generate_result(ov_int8, PROMPTS[1], GREEDY).new_tokens == GREEDY.max_new_tokens


def test_directory_round_trip(ov_int8, int8_dir):
    names = {p.name for p in int8_dir.iterdir()}
    assert {IR_FILE, "openvino_model.bin", "openvino_tokenizer.xml", "openvino_detokenizer.xml", "config.json"} <= names
    back = leanlm.load(int8_dir)
    assert back.backend == "openvino" and back.task == "causal-lm"
    rt = back.record.extra["runtime"]
    assert rt["kind"] == "decoder" and rt["weights"] == "int8"
    assert generate_result(back, PROMPTS[0], GREEDY).token_ids == generate_result(ov_int8, PROMPTS[0], GREEDY).token_ids
    assert ov_decoder(int8_dir, threads=1).generate(PROMPTS[0], GREEDY).new_tokens == GREEDY.max_new_tokens


def test_genai_peer_generates(tiny_lm, int8_dir):
    try:
        from leanlm.generate.openvino_genai import GenaiDecoder, require_genai

        require_genai()
    except (ImportError, UnsupportedError) as e:
        pytest.skip(f"openvino_genai unavailable: {e}")
    ids = tiny_lm.tokenizer(PROMPTS[0]).input_ids
    r = GenaiDecoder(int8_dir, threads=1).generate(ids, GREEDY.replace(max_new_tokens=6))
    assert len(r.token_ids) == 6 and r.prompt_tokens == len(ids)
    assert r.prefill_s > 0


def test_cli_export_and_generate(tiny_lm, tmp_path):
    _nncf()
    from leanlm.cli import app

    src = tiny_lm.save(tmp_path / "tiny")
    run = CliRunner().invoke
    ok = run(app, ["export", str(src), str(tmp_path / "ov"), "--weights", "int4", "--group-size", "32", "--no-tokenizer"])
    assert ok.exit_code == 0, ok.output
    assert leanlm.load(tmp_path / "ov").record.extra["runtime"]["weight_format"] == "INT4_SYM"
    gen = run(app, ["generate", str(tmp_path / "ov"), "Hello there", "--max-new-tokens", "4", "--stats"])
    assert gen.exit_code == 0 and "prefill" in gen.output, gen.output
    # the exported directory drafts for itself: no second conversion (layers-K / self-int4 convert)
    spec = run(app, ["generate", str(tmp_path / "ov"), "Hello there", "--max-new-tokens", "5", "--draft",
                     str(tmp_path / "ov"), "--stats"])
    assert spec.exit_code == 0 and "acceptance" in spec.output, spec.output
    bad = run(app, ["export", str(src), str(tmp_path / "x"), "--weights", "int3"])
    assert isinstance(bad.exception, ConfigError) and "weights" in str(bad.exception)
    bad = run(app, ["generate", str(tmp_path / "ov"), "Hi", "--backend", "torch"])
    assert isinstance(bad.exception, LeanlmError) and "openvino" in str(bad.exception)
    assert not (tmp_path / "x").exists()


def test_unsupported_inputs_fail_clearly(tiny_emb, tiny_lm):
    _nncf()
    with pytest.raises(UnsupportedError, match="causal-lm"):
        to_openvino(tiny_emb)
    with pytest.raises(UnsupportedError, match="group_size"):
        to_openvino(tiny_lm, OpenVinoDecoder(weights="int4", group_size=128, group_fallback="error",
                                             tokenizer=False))  # hidden is 64
    with pytest.raises(ConfigError):
        OpenVinoDecoder(ratio=0)


@pytest.mark.integration
def test_smollm2_converts_and_generates(smollm2):
    _nncf()
    dec = ov_decoder(smollm2, weights="int4", group_size=128, tokenizer=False)
    r = dec.generate("The capital of France is", max_new_tokens=16, stop_on_eos=False)
    assert r.new_tokens == 16 and r.text.strip()
