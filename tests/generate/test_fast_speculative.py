"""Fast decoder and speculative decoding reproduce the target's own greedy tokens (real SmolLM2)."""
from __future__ import annotations

import pytest
import torch

from leanlm.errors import ConfigError
from leanlm.generate import GenerationConfig, generate_result
from leanlm.generate.fast import PackedLinear, fast_decoder
from leanlm.generate.speculative import layer_dropped

PROMPT = "The capital of France is Paris. The capital of Germany is"
N = 16


@pytest.fixture(scope="module")
def reference(smollm2):
    return generate_result(smollm2, PROMPT, max_new_tokens=N, stop_on_eos=False)


def test_fast_fp32_matches_eager_greedy(smollm2, reference):
    fast = generate_result(smollm2, PROMPT, max_new_tokens=N, stop_on_eos=False, fast=True, compile=False,
                           dtype="float32")
    assert fast.token_ids == reference.token_ids
    assert "Berlin" in reference.text


def test_compiled_fast_fp32_matches_eager_greedy(smollm2, reference):
    # the real fast path: one compiled layer graph reused by all 30 layers (compiled once, cached)
    fast = generate_result(smollm2, PROMPT, max_new_tokens=N, stop_on_eos=False, fast=True, dtype="float32")
    # steps after the first run warm graphs with guard checks skipped
    assert fast.token_ids == reference.token_ids


def test_whole_model_scope_matches_layer_scope(tiny_lm):
    # scope="model" compiles the whole forward as one graph: same tokens and logits as per-layer
    cfg = dict(max_new_tokens=12, stop_on_eos=False, fast=True, dtype="float32")
    layer = generate_result(tiny_lm, PROMPT, **cfg)
    model = generate_result(tiny_lm, PROMPT, compile_scope="model", **cfg)
    eager = generate_result(tiny_lm, PROMPT, **{**cfg, "fast": False})
    assert model.token_ids == layer.token_ids == eager.token_ids
    a, b = (fast_decoder(tiny_lm, dtype="float32", scope=s) for s in ("layer", "model"))
    ids = torch.tensor([5, 9, 11, 3])
    for dec in (a, b):
        dec.reset(64)
        dec.forward(ids)
    torch.testing.assert_close(a.forward(torch.tensor([7])), b.forward(torch.tensor([7])), atol=1e-4, rtol=1e-4)
    with pytest.raises(ConfigError, match="compile_scope"):
        GenerationConfig(fast=True, compile_scope="graph")


def test_adopts_quantized_weights_from_quantize(smollm2):
    from leanlm.compress.quantize.weight_only import Int4WeightOnly, Int8WeightOnly

    ids = smollm2.tokenizer(PROMPT, return_tensors="pt").input_ids[0]
    for cfg in (Int8WeightOnly(), Int4WeightOnly(group_size=32)):
        q = smollm2.clone()
        import leanlm

        leanlm.quantize_(q, cfg)
        dec = fast_decoder(q, compile=False)
        assert [p.kind for p in dec.net.layers[0].qkv.parts] == [cfg.name[:4]]  # packed, fused
        with torch.inference_mode():
            ref = q.module(ids[None]).logits[0, -1].float()
        dec.reset(len(ids))
        out = dec.forward(ids)
        assert ((out - ref).norm() / ref.norm()) < 0.03


def test_fast_prefill_logits_close_to_hf(smollm2):
    ids = smollm2.tokenizer(PROMPT, return_tensors="pt").input_ids[0]
    with torch.inference_mode():
        ref = smollm2.module(ids[None]).logits[0].float()
    dec = fast_decoder(smollm2, dtype="float32", compile=False)
    dec.reset(len(ids))
    out = dec.forward(ids, all_logits=True)
    assert torch.allclose(out, ref, atol=2e-3, rtol=1e-4)
    # rollback + re-extend gives the same last logits as the plain prefill
    dec.rollback(len(ids) - 3)
    again = dec.forward(ids[-3:], all_logits=True)
    assert torch.allclose(again, ref[-3:], atol=2e-3, rtol=1e-4)


@pytest.mark.parametrize("kind,tol", [("int8", 0.02), ("int4", 0.15)])
def test_packed_linear_error_is_bounded(kind, tol):
    torch.manual_seed(0)
    w, x = torch.randn(100, 128), torch.randn(3, 128)  # 100 rows: not a multiple of the packing tile
    ref = x @ w.T
    lin = PackedLinear(w, None, kind, torch.bfloat16)
    y = lin(x.bfloat16()).float()
    assert ((y - ref).norm() / ref.norm()) < tol
    # many rows (prefill) take another route for int8 (dequantize + float GEMM): same weights
    xs = torch.randn(40, 128)
    rows = torch.cat([lin(xs[i : i + 8].bfloat16()) for i in range(0, 40, 8)]).float()
    full = lin(xs.bfloat16()).float()
    assert ((full - rows).norm() / rows.norm()) < 0.01  # bf16 output rounding only


def test_speculative_greedy_equals_target_greedy(smollm2, reference):
    draft = layer_dropped(smollm2, keep_every=3)
    assert len(draft.module.model.layers) == 11 and len(smollm2.module.model.layers) == 30
    # the eager Hugging Face target (DynamicCache crop on rejection); fewer tokens keep it quick
    r = generate_result(smollm2, PROMPT, max_new_tokens=10, stop_on_eos=False, draft=draft, draft_tokens=3)
    assert r.token_ids == reference.token_ids[:10]
    assert r.drafted > 0 and 0 <= r.accepted <= r.drafted


def test_speculative_with_fast_decoders_and_int8_self_draft(smollm2, reference):
    draft = fast_decoder(smollm2, weights="int8", compile=False)
    r = generate_result(smollm2, PROMPT, max_new_tokens=N, stop_on_eos=False, fast=True, compile=False,
                        dtype="float32", draft=draft, draft_tokens=4)
    assert r.token_ids == reference.token_ids
    assert r.acceptance > 0.5  # the int8 copy of the same weights mostly agrees


def test_speculative_sampling_runs_and_is_seeded(tiny_lm):
    draft = layer_dropped(tiny_lm, keep_every=2)
    kw = dict(max_new_tokens=10, temperature=0.8, seed=5, stop_on_eos=False, draft=draft)
    a, b = generate_result(tiny_lm, "Hello", **kw), generate_result(tiny_lm, "Hello", **kw)
    assert a.token_ids == b.token_ids and len(a.token_ids) == 10


def test_draft_must_differ_from_target(tiny_lm):
    with pytest.raises(ConfigError, match="draft"):
        generate_result(tiny_lm, "Hello", GenerationConfig(fast=True, compile=False, max_new_tokens=3),
                        draft=tiny_lm)
