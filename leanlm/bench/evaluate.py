"""Task metrics: classification accuracy/F1, prediction agreement and embedding fidelity.

Everything runs through `model(**batch)`, so it works the same for every backend (PyTorch eager,
torch.compile, ONNX Runtime, OpenVINO). Causal-LM metrics (perplexity, KL divergence versus the
float model) live in `leanlm.bench.lm`.

Example:
    >>> m = leanlm.load("runs/sentiment")
    >>> leanlm.evaluate(m, "movie-snippets")["accuracy"]
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from leanlm.artifact import LeanModel
from leanlm.data.metrics import classification_metrics, label_map as _label_map  # noqa: F401 (re-exported)
from leanlm.errors import DataError, LeanlmError, UnsupportedError


def _model(model: LeanModel | str) -> LeanModel:
    if isinstance(model, LeanModel):
        return model
    from leanlm.models.loading import load

    return load(model)


def _test_split(data: Any, seed: int = 0) -> Any:
    from leanlm.data import TextDataset, load_splits

    from leanlm.data.squad import QADataset

    if isinstance(data, str):
        return load_splits(data, seed=seed).test
    data = getattr(data, "test", data)  # Splits -> test split
    if not isinstance(data, (TextDataset, QADataset)):
        raise DataError(f"evaluate needs a dataset name, Splits, TextDataset or QADataset, got {type(data).__name__}")
    return data


def _check_batching(batch_size: int, max_length: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise LeanlmError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not isinstance(max_length, int) or max_length < 1:
        raise LeanlmError(f"max_length must be an integer >= 1, got {max_length!r}")


@torch.inference_mode()
def _predict(model: LeanModel, texts: Sequence[str], batch_size: int = 32, max_length: int = 128) -> list[int]:
    """Argmax class ids in input order, fixed batching (deterministic)."""
    if model.task != "sequence-classification":
        raise UnsupportedError(f"predictions need a sequence-classification model; this one is {model.task}")
    preds: list[int] = []
    for i in range(0, len(texts), batch_size):
        logits = model(**model.encode(list(texts[i : i + batch_size]), max_length=max_length))
        preds.extend(logits.float().argmax(-1).tolist())
    return preds


def evaluate_predictions(model: LeanModel, data: Any, preds: Sequence[int]) -> dict[str, Any]:
    """Metrics of already computed predictions of `model` on dataset `data`."""
    mapping = _label_map(model, data.label_names)
    if mapping is not None:
        preds = [mapping[i] for i in preds]
    out = classification_metrics(data.labels, preds, len(data.label_names))
    out["labels"] = list(data.label_names)
    return out


def evaluate(
    model: LeanModel | str,
    data: Any,
    batch_size: int = 32,
    max_length: int = 128,
    limit: int | None = None,
    seed: int = 0,
    stride: int = 128,
) -> dict[str, Any]:
    """Accuracy, macro F1 and the confusion matrix of a classifier on a dataset's test split;
    SQuAD exact match and F1 of a question-answering model.

    Args:
        model: a sequence-classification or question-answering LeanModel (any backend) or a model directory.
        data: a TextDataset, a Splits (its test split is used) or a dataset name/file
            (its test split from `leanlm.data.load_splits(name, seed=seed)`).
        batch_size: texts per forward pass.
        max_length: truncate texts to this many tokens (question answering: window length).
        limit: evaluate only the first `limit` examples.
        seed: split seed when `data` is a name.
        stride: question answering: tokens shared by consecutive windows of a long context.

    Returns:
        {"accuracy", "macro_f1", "n", "confusion" (rows = true label, columns = predicted), "labels"};
        for question answering {"exact_match", "f1" (percent, SQuAD's official normalisation), "n", "examples"}.

    Example:
        >>> leanlm.evaluate("runs/sentiment", "movie-snippets")
        {'accuracy': 0.83, 'macro_f1': 0.83, 'n': 1023, 'confusion': [[...], [...]], ...}
    """
    model = _model(model)
    _check_batching(batch_size, max_length)
    if model.task == "causal-lm":
        raise UnsupportedError("evaluate covers classifiers; for causal-lm models use leanlm.bench.lm "
                               "(perplexity(model), compare(model, reference) for KL divergence)")
    if model.task not in ("sequence-classification", "question-answering"):
        raise UnsupportedError(f"evaluate needs a sequence-classification or question-answering model; this one is "
                               f"{model.task} (for embeddings use leanlm.bench.evaluate.embedding_fidelity)")
    test = _test_split(data, seed)
    if limit is not None:
        if not isinstance(limit, int) or limit < 1:
            raise LeanlmError(f"limit must be an integer >= 1, got {limit!r}")
        test = test.head(limit)
    if model.task == "question-answering":
        return _evaluate_qa(model, test, batch_size, max_length, stride)
    _label_map(model, test.label_names)  # fail on a label mismatch before running anything
    preds = _predict(model, test.texts, batch_size, max_length)
    return evaluate_predictions(model, test, preds)


def _evaluate_qa(model: LeanModel, test: Any, batch_size: int, max_length: int, stride: int) -> dict[str, Any]:
    from leanlm.data.qa import evaluate_answers
    from leanlm.data.squad import QADataset

    if not isinstance(test, QADataset):
        raise DataError(f"{test.name} is classification data; a question-answering model needs SQuAD-format data "
                        "(the squad dataset or a SQuAD .json file)")
    return evaluate_answers(model, test.examples, max_length=max_length, stride=stride, batch_size=batch_size)


def agreement(reference: LeanModel, model: LeanModel, texts: Sequence[str], batch_size: int = 32,
              max_length: int = 128) -> float:
    """Fraction of `texts` on which two classifiers predict the same class.

    Example:
        >>> agreement(fp32, int8, splits.test.texts)
        0.994
    """
    if not texts:
        raise LeanlmError("agreement needs at least one text")
    _check_batching(batch_size, max_length)
    a = np.asarray(_predict(reference, texts, batch_size, max_length))
    b = np.asarray(_predict(model, texts, batch_size, max_length))
    return float((a == b).mean())


def embedding_fidelity(reference: LeanModel, model: LeanModel, texts: Sequence[str], batch_size: int = 32,
                       max_length: int = 128) -> dict[str, Any]:
    """Cosine similarity between a float model's sentence embeddings and a compressed model's.

    Embeddings are mean-pooled and L2-normalised (`leanlm.models.embed.embed`), row by row.

    Returns:
        {"mean_cosine", "min_cosine", "n"}.

    Example:
        >>> embedding_fidelity(fp32, int8, sentences)["mean_cosine"]
        0.998
    """
    from leanlm.models.embed import embed

    if not texts:
        raise LeanlmError("embedding_fidelity needs at least one text")
    _check_batching(batch_size, max_length)
    a = embed(reference, list(texts), batch_size=batch_size, max_length=max_length)
    b = embed(model, list(texts), batch_size=batch_size, max_length=max_length)
    if a.shape != b.shape:
        raise LeanlmError(f"embedding shapes differ: reference {a.shape} vs model {b.shape}")
    cos = np.clip((a * b).sum(axis=1), -1.0, 1.0)
    return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()), "n": int(len(cos))}
