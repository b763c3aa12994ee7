"""Tokenizer training: WordPiece (CJK per character, BERT pair template), byte-level BPE, vocab checks."""
from __future__ import annotations

import pytest

from leanlm.errors import ConfigError, DataError
from leanlm.train.tokenizer import check_vocab, train_tokenizer

CORPUS = [
    "The film was a quiet triumph of acting and light.",
    "Stocks fell after the report, and the market closed lower.",
    "今天天气很好，我们去公园散步。",
    "这部电影非常好看，演员的表演很自然。",
    "A dull plot makes for a long evening at the cinema.",
] * 8


@pytest.fixture(scope="module")
def wordpiece():
    return train_tokenizer(CORPUS, "wordpiece", vocab_size=300, min_frequency=1)


def test_wordpiece_splits_cjk_per_character_and_keeps_bert_roles(wordpiece):
    assert wordpiece.tokenize("今天天气很好") == ["今", "天", "天", "气", "很", "好"]
    assert wordpiece.tokenize("The FILM") == ["the", "film"]
    enc = wordpiece("今天", "the film")
    assert enc["input_ids"][0] == wordpiece.cls_token_id and enc["input_ids"][-1] == wordpiece.sep_token_id
    assert enc["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1]
    assert wordpiece.mask_token == "[MASK]" and wordpiece.pad_token_id == 0


def test_wordpiece_round_trips_through_save_pretrained(wordpiece, tmp_path):
    from transformers import AutoTokenizer

    wordpiece.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = "这部电影 was a quiet triumph"
    assert again(text)["input_ids"] == wordpiece(text)["input_ids"]
    assert again.mask_token_id == wordpiece.mask_token_id and "token_type_ids" in again(text)


def test_bpe_is_byte_level_and_lossless():
    tok = train_tokenizer(CORPUS, "bpe", vocab_size=400, min_frequency=1)
    text = "Unseen ünïcödé 北京 😀 text"
    ids = tok(text)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id


@pytest.mark.parametrize("kwargs, error", [
    (dict(texts=[], kind="wordpiece"), DataError),
    (dict(texts=["  ", ""], kind="bpe"), DataError),
    (dict(texts=CORPUS, kind="sentencepiece"), ConfigError),
    (dict(texts=CORPUS, kind="wordpiece", vocab_size=3), ConfigError),
])
def test_bad_requests_are_one_line_errors(kwargs, error):
    with pytest.raises(error) as e:
        train_tokenizer(**kwargs)
    assert "\n" not in str(e.value)


def test_check_vocab(wordpiece):
    from transformers import BertConfig

    check_vocab(BertConfig(vocab_size=len(wordpiece)), wordpiece)
    check_vocab(BertConfig(vocab_size=len(wordpiece) + 64), wordpiece)  # a padded table is fine
    for size in (len(wordpiece) - 1, 30522):
        with pytest.raises(ConfigError, match="tokenizer has"):
            check_vocab(BertConfig(vocab_size=size), wordpiece)
