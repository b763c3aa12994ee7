"""LM metrics: sliding-window perplexity, KLD / top-1 vs a reference, SQuAD scoring."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from leanlm.bench.lm import (bootstrap_ci, compare, exact_match, f1_score, load_squad, normalize_answer, perplexity,
                             squad, windows)
from leanlm.errors import DataError, LeanlmError

TEXT = ("The tower is 324 metres tall, about the same height as an 81-storey building, and the tallest "
        "structure in Paris. Its base is square, measuring 125 metres on each side. During its construction, "
        "the Eiffel Tower surpassed the Washington Monument to become the tallest man-made structure in the world.")


def test_windows_score_every_token_once():
    for n, window, stride in [(10, 4, 2), (100, 32, 31), (7, 16, 8), (50, 20, 7), (64, 2, 1)]:
        scored = []
        for begin, end, first in windows(n, window, stride):
            assert begin < first <= end and end - begin <= window
            scored.extend(range(first, end))
        assert scored == list(range(1, n))
    with pytest.raises(LeanlmError):
        list(windows(10, 4, 4))


def test_perplexity_equals_direct_computation(smollm2):
    ids = smollm2.tokenizer(TEXT, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.inference_mode():
        logits = smollm2.module(ids).logits[0].float()
    direct = math.exp(torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:]).item())
    res = perplexity(smollm2, text=TEXT, tokens=None, window=1024, stride=512)
    assert res["tokens"] == ids.shape[1] - 1
    assert res["perplexity"] == pytest.approx(direct, rel=1e-4)
    assert res["ci"][0] <= res["perplexity"] <= res["ci"][1]
    # a sliding window with less context can only be close, and is a real perplexity
    slid = perplexity(smollm2, text=TEXT, tokens=None, window=32, stride=16)
    assert slid["tokens"] == res["tokens"]
    assert 1 < slid["perplexity"] < 5 * res["perplexity"]


def test_compare_with_itself_is_zero_and_int8_is_close(smollm2):
    same = compare(smollm2, smollm2, text=TEXT, tokens=None)
    assert same["kld"] == pytest.approx(0, abs=1e-6) and same["top1"] == 1.0
    from leanlm.generate.fast import fast_decoder

    q = fast_decoder(smollm2, weights="int8", compile=False)
    res = compare(q, smollm2, text=TEXT, tokens=None)
    assert 0 < res["kld"] < 0.05 and res["top1"] > 0.85
    assert res["kld_ci"][0] <= res["kld"] <= res["kld_ci"][1]


def test_perplexity_on_wikitext_budget(tiny_lm):
    res = perplexity(tiny_lm, tokens=300, window=128, stride=64)
    assert res["tokens"] == 299 and res["perplexity"] > 1
    with pytest.raises(LeanlmError):
        perplexity(tiny_lm, text="hi", tokens=None)


def test_bootstrap_ci_brackets_the_mean():
    v = np.random.default_rng(0).normal(1.0, 0.5, size=4096)
    lo, hi = bootstrap_ci(v)
    assert lo < v.mean() < hi and hi - lo < 0.1


def test_squad_normalization_and_scores():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert exact_match("the Eiffel tower", "Eiffel Tower.") == 1.0
    assert f1_score("Eiffel tower in Paris", "the Eiffel Tower") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert f1_score("nothing", "Eiffel") == 0.0


def test_squad_file_errors(tmp_path):
    with pytest.raises(DataError):
        load_squad(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(DataError):
        load_squad(bad)


def test_squad_check_runs_on_real_file(tiny_lm, squad_path):
    qs = load_squad(squad_path, n=3)
    assert len(qs) == 3 and all(q["answers"] for q in qs)
    res = squad(tiny_lm, squad_path, n=2, max_new_tokens=4)
    assert res["n"] == 2 and 0 <= res["exact_match"] <= res["f1"] + 1e-9 <= 100
