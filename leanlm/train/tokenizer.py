"""Train a tokenizer on a corpus: WordPiece for encoders, byte-level BPE for decoders.

Both are trained with Hugging Face `tokenizers` and returned as a `transformers` fast tokenizer,
so `tokenizer.save_pretrained(model_dir)` puts it in a model directory that `leanlm.load` reads.
WordPiece uses BERT's normalizer with `handle_chinese_chars=True`: every CJK character becomes
its own token (as BERT's BasicTokenizer does), so Chinese needs no word segmenter.

Example:
    >>> tok = train_tokenizer(texts, kind="wordpiece", vocab_size=8000)
    >>> tok.tokenize("我爱北京 hello")
    ['我', '爱', '北', '京', 'hello']
    >>> check_vocab(model, tok)          # ConfigError when the embedding table does not fit
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from leanlm.errors import ConfigError, DataError

# An embedding table may be padded past the tokenizer's size (to a multiple of 64 or 128, for
# fast matmuls); a gap this large or larger means the tokenizer belongs to another model.
_PAD_SLACK = 128


@dataclass(frozen=True)
class _Kind:
    """How one tokenizer kind is built: its pipeline, its special tokens, and their roles."""

    build: Callable[..., Any]
    special: tuple[str, ...]
    roles: dict[str, str]  # transformers role ("pad_token", ...) -> token
    input_names: tuple[str, ...]


def _wordpiece(vocab_size: int, min_frequency: int, lowercase: bool, special: tuple[str, ...]):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(special))
    return tok, trainer, _bert_template


def _bert_template(tok: Any) -> None:
    from tokenizers import processors

    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    # token_type_ids 0 for sentence A, 1 for sentence B: what next-sentence prediction reads
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])


def _bpe(vocab_size: int, min_frequency: int, lowercase: bool, special: tuple[str, ...]):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # all 256 byte symbols up front: any input (any script, any emoji) encodes without [UNK]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(special),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    return tok, trainer, None


KINDS: dict[str, _Kind] = {
    "wordpiece": _Kind(_wordpiece, ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
                       {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                        "mask_token": "[MASK]"},
                       ("input_ids", "token_type_ids", "attention_mask")),
    "bpe": _Kind(_bpe, ("<|endoftext|>", "<|pad|>"),
                 {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                  "pad_token": "<|pad|>"},
                 ("input_ids", "attention_mask")),
}


def train_tokenizer(
    texts: Iterable[str],
    kind: str = "wordpiece",
    vocab_size: int = 8000,
    min_frequency: int = 2,
    lowercase: bool | None = None,
    model_max_length: int = 512,
) -> Any:
    """Train a tokenizer on raw texts; returns a `transformers` fast tokenizer (PreTrainedTokenizerFast).

    Args:
        texts: the corpus (documents, paragraphs or sentences; any iterable of strings).
        kind: "wordpiece" (BERT-style encoders: [CLS]/[SEP]/[MASK], CJK split per character) or
            "bpe" (byte-level, GPT-2 style decoders: <|endoftext|> as bos/eos, <|pad|> for batching).
        vocab_size: target vocabulary size, special tokens included (the result may be smaller on a
            small corpus).
        min_frequency: merges/pieces seen fewer times than this are not learned.
        lowercase: lowercase before tokenizing (default: True for wordpiece, False for bpe).
        model_max_length: longest input the tokenizer will produce when truncating.

    Example:
        >>> tok = train_tokenizer(leanlm.data.load_text("wikitext-2", "train").splitlines(), "bpe", vocab_size=8000)
        >>> tok.save_pretrained("runs/tok")
    """
    from transformers import PreTrainedTokenizerFast

    if kind not in KINDS:
        from leanlm.errors import did_you_mean

        raise ConfigError(did_you_mean(kind, list(KINDS), "tokenizer kind"))
    spec = KINDS[kind]
    if vocab_size < len(spec.special) + 1 or vocab_size > 1_000_000:
        raise ConfigError(f"vocab_size must be in [{len(spec.special) + 1}, 1000000], got {vocab_size}")
    if min_frequency < 1:
        raise ConfigError(f"min_frequency must be >= 1, got {min_frequency}")
    corpus = [t for t in texts if isinstance(t, str) and t.strip()]
    if not corpus:
        raise DataError("the corpus has no text to train a tokenizer on")
    tok, trainer, finish = spec.build(vocab_size, min_frequency, kind == "wordpiece" if lowercase is None else lowercase,
                                      spec.special)
    tok.train_from_iterator(corpus, trainer, length=len(corpus))
    if finish is not None:
        finish(tok)
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length,
                                   model_input_names=list(spec.input_names), **spec.roles)


def vocab_size_of(model_or_config: Any) -> int:
    """The embedding table's size of a LeanModel, torch module or transformers config."""
    for obj in (model_or_config, getattr(model_or_config, "module", None)):
        cfg = getattr(obj, "config", obj)
        size = getattr(cfg, "vocab_size", None)
        if isinstance(size, int):
            return size
    raise ConfigError(f"cannot tell the vocabulary size of {type(model_or_config).__name__}")


def check_vocab(model_or_config: Any, tokenizer: Any) -> None:
    """Refuse a tokenizer whose vocabulary does not fit the model's embedding table (one-line ConfigError).

    A table padded a little past the tokenizer (up to 127 unused rows) is accepted.

    Args:
        model_or_config: a LeanModel, a transformers model or its config (anything with vocab_size).
        tokenizer: a transformers tokenizer.

    Example:
        >>> check_vocab(leanlm.load("minilm-l6"), tok)
    """
    model_size, tok_size = vocab_size_of(model_or_config), len(tokenizer)
    if not (0 <= model_size - tok_size < _PAD_SLACK):
        raise ConfigError(f"tokenizer has {tok_size} tokens but the model's vocabulary has {model_size}; "
                          "use the model's own tokenizer or pre-train from scratch")
