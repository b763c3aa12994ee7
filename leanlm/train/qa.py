"""Fine-tune an encoder for extractive question answering (SQuAD style) with the plain training loop.

A fresh span head (`AutoModelForQuestionAnswering`: one linear layer giving start and end logits
per token) goes on the encoder; question + context windows (`leanlm.data.qa.train_features`,
document stride) are labelled with the answer's first and last token, or [CLS] when a window
does not hold the answer. Validation is SQuAD F1 on the validation articles, decoded exactly as
`leanlm evaluate` and the server's /v1/answer decode.

Example:
    >>> m = leanlm.finetune("minilm-l6", "squad", QAFinetuneConfig(max_length=256), output="runs/qa")
    >>> m.record.metrics["test"]["f1"]
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from leanlm.artifact import LeanModel
from leanlm.config import BaseConfig, check
from leanlm.data import Splits, load_splits
from leanlm.data.qa import MAX_ANSWER_TOKENS, evaluate_answers, feature_batches, train_features
from leanlm.data.squad import QADataset
from leanlm.errors import DataError, LeanlmError, UnsupportedError
from leanlm.train.loop import LoopConfig, TrainResult, train_loop

TASK = "question-answering"


@dataclass(frozen=True)
class QAFinetuneConfig(BaseConfig):
    """Extractive question-answering fine-tuning settings.

    Args:
        loop: optimisation settings (epochs, lr, warm-up, clipping, early stopping).
        batch_size: windows per step (dynamic padding per batch).
        max_length: tokens per window (question + context part + 3 special tokens).
        stride: tokens shared by consecutive windows of one long context.
        max_answer_tokens: longest span decoded at validation and test time.
        train_size: train on only the first this many training questions (0 = all).
        eval_size: validate on at most this many validation questions (0 = all).
        split_seed: seed of the by-article train/validation/test split (recorded in leanlm.json).
        threads: torch threads (0 = all cores).

    Example:
        >>> QAFinetuneConfig(loop=LoopConfig(epochs=2, lr=1e-4), max_length=256, train_size=4000)
    """

    loop: LoopConfig = field(default_factory=lambda: LoopConfig(epochs=2, lr=1e-4))
    batch_size: int = 16
    max_length: int = 384
    stride: int = 128
    max_answer_tokens: int = MAX_ANSWER_TOKENS
    train_size: int = 0
    eval_size: int = 0
    split_seed: int = 0
    threads: int = 0

    def validate(self) -> None:
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(32 <= self.max_length <= 8192, f"max_length must be in [32, 8192], got {self.max_length}")
        check(1 <= self.stride < self.max_length // 2, f"stride must be in [1, max_length / 2), got {self.stride}")
        check(self.max_answer_tokens >= 1, f"max_answer_tokens must be >= 1, got {self.max_answer_tokens}")
        check(self.train_size >= 0 and self.eval_size >= 0, "train_size and eval_size must be >= 0")
        check(self.threads >= 0, "threads must be >= 0")


def _qa_splits(data: Splits | str, seed: int) -> Splits:
    splits = data if isinstance(data, Splits) else load_splits(data, seed=seed)
    if not isinstance(splits.train, QADataset):
        raise DataError(f"question answering needs SQuAD-format data (the squad dataset or a SQuAD .json file); "
                        f"{splits.name} is a classification dataset")
    return splits


def _base(model: LeanModel | str, seed: int) -> LeanModel:
    """The encoder with a fresh, seeded span head."""
    from leanlm.models.loading import load

    if isinstance(model, LeanModel):
        if model.task != TASK or model.record.techniques:
            raise LeanlmError("pass a model name or directory; a fresh span head is built on the encoder")
        return model
    base = load(model)
    if base.task == "causal-lm":
        raise LeanlmError(f"{model} is a decoder; extractive question answering needs an encoder")
    if base.record.techniques:
        raise LeanlmError("fine-tune the float model, then compress it (this one is already compressed)")
    torch.manual_seed(seed)  # the head is random: the training seed decides the whole run
    qa = load(base.path or model, task=TASK)
    qa.record.base_model = base.record.base_model
    return qa


def finetune_qa(model: LeanModel | str = "minilm-l6", data: Splits | str = "squad",
                config: QAFinetuneConfig = QAFinetuneConfig(), output: str | os.PathLike | None = None,
                overwrite: bool = False, progress: bool = True) -> LeanModel:
    """Fine-tune an encoder for extractive QA; report EM/F1 on the test articles; optionally save.

    `leanlm.finetune(model, data, QAFinetuneConfig(...))` calls this.

    Args:
        model: bundled name or model directory of an encoder (a new span head is added).
        data: "squad", a local SQuAD-format .json file, or ready `Splits` of QADatasets.
        config: QAFinetuneConfig.
        output: directory to write the model to (atomically, task "question-answering"); None keeps it in memory.

    Returns the fine-tuned LeanModel; record.metrics holds validation F1 and test EM/F1.
    """
    from leanlm.train.finetune import is_main_process

    if output is not None and Path(output).exists() and not overwrite:
        raise LeanlmError(f"{output} already exists; choose another output or pass overwrite")
    splits = _qa_splits(data, config.split_seed)
    qa = _base(model, config.loop.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    train = splits.train.head(config.train_size) if config.train_size else splits.train
    val = splits.validation.head(config.eval_size) if config.eval_size else splits.validation
    limit = min(config.max_length, qa.max_length)
    feats = train_features(qa.tokenizer, train.examples, limit, config.stride)
    pad_id = qa.tokenizer.pad_token_id or 0
    bs = config.batch_size
    decode = dict(max_length=limit, stride=config.stride, max_answer_tokens=config.max_answer_tokens)

    def loss_fn(module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return module(**batch).loss  # mean of start and end cross-entropies

    result: TrainResult = train_loop(
        qa.module,
        lambda epoch: feature_batches(feats, bs, pad_id, config.loop.seed * 1000 + epoch, shuffle=True),
        math.ceil(len(feats) / bs),
        loss_fn,
        lambda module: evaluate_answers(qa, val.examples, **decode)["f1"],
        config.loop,
        progress=progress,
    )
    test = evaluate_answers(qa, splits.test.examples, **decode)
    qa.record.data = {**splits.describe(), "train_used": len(train), "train_windows": len(feats),
                      "validation_used": len(val)}
    qa.record.training = {"config": config.to_dict(), "result": result.to_dict()}
    qa.record.metrics["validation"] = {"f1": result.best_score}
    qa.record.metrics["test"] = {k: test[k] for k in ("exact_match", "f1", "n")}
    if output is not None and is_main_process():
        qa.save(output, overwrite=overwrite)
    return qa


def qa_summary(model: LeanModel) -> dict[str, Any]:
    """The numbers a person wants after QA fine-tuning."""
    t = model.record.training or {}
    test = model.record.metrics.get("test", {})
    return {"test_exact_match": test.get("exact_match"), "test_f1": test.get("f1"),
            "validation_f1": model.record.metrics.get("validation", {}).get("f1"),
            "steps": t.get("result", {}).get("steps"), "seconds": t.get("result", {}).get("seconds"),
            "split_seed": (model.record.data or {}).get("seed")}


def refuse_peft(peft: Any) -> None:
    """PEFT would freeze the random span head; say so instead of training nothing useful."""
    if peft is not None:
        raise UnsupportedError("--peft is for classification; question answering fine-tunes every weight")
