import numpy as np
import pytest

import leanlm
from leanlm.errors import LeanlmError


def test_unknown_model_lists_valid_names():
    with pytest.raises(LeanlmError) as e:
        leanlm.load("minilm-l7")
    assert "minilm-l6" in str(e.value) and "smollm2-135m" in str(e.value)


def test_embed_tiny_is_normalised_and_batched(tiny_emb, sentences):
    a = leanlm.embed(tiny_emb, sentences, batch_size=3)
    b = leanlm.embed(tiny_emb, sentences, batch_size=8)
    assert a.shape == (len(sentences), 64) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-5)  # padding must not leak into the mean


def test_embed_truncates_long_texts(tiny_emb):
    long = "word " * 5000
    assert leanlm.embed(tiny_emb, [long]).shape == (1, 64)
    assert leanlm.embed(tiny_emb, [long], max_length=16).shape == (1, 64)


def test_embed_rejects_empty(tiny_emb):
    with pytest.raises(LeanlmError):
        leanlm.embed(tiny_emb, [])


@pytest.mark.integration
def test_real_minilm_embeddings_are_semantic(minilm):
    E = leanlm.embed(minilm, ["A man is eating food.", "A man is eating a piece of bread.",
                              "The stock market fell sharply today."])
    sim = E @ E.T
    assert sim[0, 1] > 0.6 and sim[0, 2] < 0.2


@pytest.mark.integration
def test_local_hf_directory_loads(tmp_path, tiny_emb):
    tiny_emb.module.save_pretrained(tmp_path / "hf")
    tiny_emb.tokenizer.save_pretrained(tmp_path / "hf")
    m = leanlm.load(tmp_path / "hf")
    assert m.task == "feature-extraction" and m.record.base_model == str(tmp_path / "hf")
