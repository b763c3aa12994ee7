"""Generation: config validation, prompts, stops, cache equivalence, sampling (tiny model)."""
from __future__ import annotations

import pytest
import torch

from leanlm.errors import ConfigError, LeanlmError
from leanlm.generate import GenerationConfig, generate, generate_result, generate_stream
from leanlm.generate.sampling import Sampler

PROMPT = "The weather today is"


@pytest.mark.parametrize("bad", [
    dict(max_new_tokens=0), dict(temperature=-1.0), dict(top_k=-2), dict(top_p=0.0), dict(top_p=1.5),
    dict(repetition_penalty=0.0), dict(seed=-1), dict(stop=("",)), dict(dtype="int3"), dict(weights="int2"),
    dict(weights="int8"), dict(draft_tokens=0), dict(fast=True, use_cache=False), dict(temperature=float("nan")),
])
def test_invalid_config_is_one_line_config_error(bad):
    with pytest.raises(ConfigError) as e:
        GenerationConfig(**bad)
    assert "\n" not in str(e.value)


def test_config_round_trips_and_stop_string_shorthand():
    cfg = GenerationConfig(stop="\n", temperature=0.5, seed=3)
    assert cfg.stop == ("\n",)
    assert GenerationConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError):
        GenerationConfig.from_dict({"max_new_tokens": 4, "nope": 1})


def test_unknown_keyword_option_is_config_error(tiny_lm):
    with pytest.raises(ConfigError, match="unknown generation option"):
        generate(tiny_lm, PROMPT, max_tokens=3)


def test_empty_and_too_long_prompts_are_clear_errors(tiny_lm):
    with pytest.raises(LeanlmError, match="empty"):
        generate(tiny_lm, "   ")
    with pytest.raises(LeanlmError, match="empty"):
        generate(tiny_lm, [])
    with pytest.raises(LeanlmError, match="context window"):
        generate(tiny_lm, "word " * 2100, max_new_tokens=2)
    with pytest.raises(LeanlmError, match="role"):
        generate(tiny_lm, [{"content": "hi"}])


def test_errors_surface_at_call_time_for_streams(tiny_lm):
    with pytest.raises(LeanlmError, match="empty"):
        generate_stream(tiny_lm, "")


def test_max_new_tokens_and_eos_handling(tiny_lm):
    r = generate_result(tiny_lm, PROMPT, max_new_tokens=7, stop_on_eos=False)
    assert r.new_tokens == 7 and r.finish_reason == "length"
    assert r.prompt_tokens == len(tiny_lm.tokenizer(PROMPT).input_ids)


def test_kv_cache_equals_no_cache_and_fast_eager(tiny_lm):
    base = dict(max_new_tokens=12, stop_on_eos=False, repetition_penalty=1.3)
    cached = generate_result(tiny_lm, PROMPT, **base).token_ids
    uncached = generate_result(tiny_lm, PROMPT, use_cache=False, **base).token_ids
    fast = generate_result(tiny_lm, PROMPT, fast=True, compile=False, dtype="float32", **base).token_ids
    assert cached == uncached == fast
    assert len(set(cached)) > 1  # the penalty breaks the tiny model's repetition loop


def test_stop_strings_cut_text_and_stream_matches(tiny_lm):
    full = generate_result(tiny_lm, PROMPT, max_new_tokens=12, stop_on_eos=False, repetition_penalty=1.3).text
    assert len(full.strip()) > 4
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    r = generate_result(tiny_lm, PROMPT, max_new_tokens=12, stop_on_eos=False, repetition_penalty=1.3, stop=[stop])
    assert r.finish_reason == "stop"
    assert r.text == full[: full.index(stop)]
    chunks = list(generate(tiny_lm, PROMPT, max_new_tokens=12, stop_on_eos=False, repetition_penalty=1.3,
                           stop=[stop], stream=True))
    assert "".join(chunks) == r.text
    assert all(stop not in c for c in chunks)


def test_chat_template_is_applied(tiny_lm):
    plain = generate_result(tiny_lm, "Hi!", max_new_tokens=2, stop_on_eos=False)
    chat = generate_result(tiny_lm, "Hi!", max_new_tokens=2, stop_on_eos=False, chat=True)
    msgs = generate_result(tiny_lm, [{"role": "user", "content": "Hi!"}], max_new_tokens=2, stop_on_eos=False)
    assert chat.prompt_tokens == msgs.prompt_tokens > plain.prompt_tokens + 5
    assert chat.token_ids == msgs.token_ids


def test_sampling_is_seeded_and_respects_top_k():
    logits = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    cfg = GenerationConfig(temperature=1.0, top_k=2, seed=7)
    a = [Sampler(cfg).pick(logits) for _ in range(3)]
    s1, s2 = Sampler(cfg), Sampler(cfg)
    draws1 = [s1.pick(logits) for _ in range(50)]
    draws2 = [s2.pick(logits) for _ in range(50)]
    assert draws1 == draws2 and len(set(a)) == 1
    assert set(draws1) <= {3, 4} and len(set(draws1)) == 2


def test_top_p_keeps_smallest_set_and_penalty_follows_hf_rule():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    s = Sampler(GenerationConfig(temperature=1.0, top_p=0.75, seed=0))
    kept = torch.isfinite(s.process(probs.log(), None))
    assert kept.tolist() == [True, True, False, False]
    p = Sampler(GenerationConfig(repetition_penalty=2.0))
    out = p.process(torch.tensor([2.0, -2.0, 1.0]), torch.tensor([0, 1]))
    assert out.tolist() == [1.0, -4.0, 1.0]


def test_sampled_generation_reproducible_with_seed(tiny_lm):
    kw = dict(max_new_tokens=8, temperature=1.0, top_p=0.9, seed=11, stop_on_eos=False)
    assert generate_result(tiny_lm, PROMPT, **kw).token_ids == generate_result(tiny_lm, PROMPT, **kw).token_ids


def test_generate_rejects_non_decoder(tiny_clf):
    from leanlm.errors import UnsupportedError

    with pytest.raises(UnsupportedError, match="causal-lm"):
        generate(tiny_clf, PROMPT)


def test_leanlm_generate_is_callable_after_package_import(tiny_lm):
    import leanlm
    import leanlm.generate as pkg

    assert leanlm.generate is pkg or callable(leanlm.generate)
    text = leanlm.generate(tiny_lm, PROMPT, max_new_tokens=3, stop_on_eos=False)
    assert isinstance(text, str) and text


def test_token_id_prompts(tiny_lm):
    ids = tiny_lm.tokenizer(PROMPT).input_ids
    a = generate_result(tiny_lm, ids, max_new_tokens=4, stop_on_eos=False)
    b = generate_result(tiny_lm, PROMPT, max_new_tokens=4, stop_on_eos=False)
    assert a.token_ids == b.token_ids
    with pytest.raises(LeanlmError, match="token ids"):
        generate(tiny_lm, [10**7])
