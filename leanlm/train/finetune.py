"""Fine-tune an encoder for sequence classification with the plain training loop.

Example:
    >>> model = leanlm.finetune("minilm-l6", "movie-snippets", FinetuneConfig(), output="runs/sentiment")
    >>> model.record.metrics["test"]["accuracy"]
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from leanlm.artifact import LeanModel
from leanlm.config import BaseConfig, check
from leanlm.data import Splits, TextDataset, load_splits
from leanlm.errors import LeanlmError
from leanlm.train.loop import Hook, LoopConfig, TrainResult, total_steps, train_loop
from leanlm.train.peft import adapt_, merge_, save_with_adapter


def finetune_loop(**settings: Any) -> LoopConfig:
    """Loop settings fine-tuning starts from: the LAST weights of the schedule, no early stopping.

    The learning rate decays to zero at the last step, so the last weights are the annealed ones;
    a "best" checkpoint picked on a small validation split of the training domain is often an
    earlier, un-annealed one that scores the same there and transfers worse to other text
    (benchmarks/transfer.py, issue 13). `restore_best=True, patience=2` gives the old behaviour.

    Example:
        >>> FinetuneConfig(loop=finetune_loop(epochs=1, lr=6e-5))
    """
    return LoopConfig(**{"patience": 0, "restore_best": False, **settings})


@dataclass(frozen=True)
class FinetuneConfig(BaseConfig):
    """Sequence-classification fine-tuning settings.

    Args:
        loop: optimisation settings (epochs, lr, warm-up, clipping, early stopping); default
            `finetune_loop()`: 3 epochs, the last weights, no early stopping.
        batch_size: examples per step (dynamic padding per batch).
        max_length: truncate texts to this many tokens.
        bucket_window: batch order. N > 0 sorts each window of N batches by text length (less padding,
            so faster steps) and shuffles the batches; 0 shuffles examples uniformly.
        train_size: use only this many training examples (0 = all), for quick runs.
        eval_size: validate on at most this many validation examples (0 = all).
        split_seed: seed of the train/validation/test split (recorded in leanlm.json).
        threads: torch threads (0 = all cores).
        peft: None trains every weight; `Lora(...)` or `AdaLora(...)` trains adapters only, then
            merges them into the base (the adapter is kept in the model directory's `adapter/`).

    Example:
        >>> FinetuneConfig(loop=finetune_loop(epochs=1, grad_accum=2), peft=AdaLora(init_r=12, target_r=4))
    """

    loop: LoopConfig = field(default_factory=finetune_loop)
    batch_size: int = 32
    max_length: int = 128
    bucket_window: int = 50
    train_size: int = 0
    eval_size: int = 0
    split_seed: int = 0
    threads: int = 0
    peft: BaseConfig | None = None

    def validate(self) -> None:
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(8 <= self.max_length <= 8192, f"max_length must be in [8, 8192], got {self.max_length}")
        check(self.bucket_window >= 0, f"bucket_window must be >= 0, got {self.bucket_window}")
        check(self.train_size >= 0 and self.eval_size >= 0, "train_size and eval_size must be >= 0")
        check(self.threads >= 0, "threads must be >= 0")
        check(self.peft is None or self.peft.family == "peft", f"peft must be a PEFT config (lora, adalora), "
              f"got {type(self.peft).__name__}")


def _batches(model: LeanModel, data: TextDataset, batch_size: int, max_length: int, seed: int,
             shuffle: bool, bucket_window: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data)) if shuffle else np.arange(len(data))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if shuffle and bucket_window:
        # Length bucketing: sort each window of batches by text length so a batch pads to
        # similar lengths (about 1.5x fewer tokens on short sentences), then shuffle batch order.
        window = batch_size * bucket_window
        chunks = []
        for w in range(0, len(order), window):
            part = sorted(order[w : w + window], key=lambda j: len(data.texts[j]))
            chunks += [np.array(part[i : i + batch_size]) for i in range(0, len(part), batch_size)]
        chunks = [chunks[k] for k in rng.permutation(len(chunks))]
    for idx in chunks:
        batch = model.encode([data.texts[j] for j in idx], max_length=max_length)
        batch["labels"] = torch.tensor([data.labels[j] for j in idx])
        yield batch


@torch.inference_mode()
def predict(model: LeanModel, data: TextDataset, batch_size: int = 64, max_length: int = 128) -> np.ndarray:
    """Predicted label per example of `data`, in order (shape [len(data)])."""
    out = []
    for batch in _batches(model, data, batch_size, max_length, 0, shuffle=False):
        batch.pop("labels")
        out.append(model.module(**batch).logits.argmax(-1).numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def accuracy(model: LeanModel, data: TextDataset, batch_size: int = 64, max_length: int = 128) -> float:
    return float((predict(model, data, batch_size, max_length) == np.asarray(data.labels)).mean())


def finetune(
    model: LeanModel | str = "minilm-l6",
    data: Splits | str = "movie-snippets",
    config: BaseConfig = FinetuneConfig(),
    output: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
    hooks: Sequence[Hook] = (),
) -> LeanModel:
    """Fine-tune an encoder for text classification (or, with a QAFinetuneConfig, extractive
    question answering); evaluate on the test split; optionally save.

    Args:
        model: bundled name, model directory or LeanModel (a fresh classification head is added).
        data: dataset name, local CSV/JSONL file, or ready `Splits` ("squad" or a SQuAD .json for QA).
        config: FinetuneConfig (loop settings, batch size, subset sizes, split seed), or
            `leanlm.train.qa.QAFinetuneConfig` for question answering (`leanlm.train.qa.finetune_qa`).
        output: directory to write the fine-tuned model to (atomically); None keeps it in memory.
        hooks: step hooks handed to the training loop (`hook(step, module)` after each optimizer step).

    Returns the fine-tuned LeanModel; record.metrics holds validation and test accuracy
    (question answering: validation F1, test exact match and F1).

    Example:
        >>> leanlm.finetune("minilm-l6", "squad", QAFinetuneConfig(max_length=256), output="runs/qa")
    """
    from leanlm.models.loading import load
    from leanlm.train.qa import QAFinetuneConfig, finetune_qa

    if isinstance(config, QAFinetuneConfig):  # the span task has its own head, features and metric
        return finetune_qa(model, data, config, output, overwrite, progress)

    if output is not None and Path(output).exists() and not overwrite:
        # Fail before spending minutes training.
        raise LeanlmError(f"{output} already exists; choose another output or pass overwrite")
    splits = data if isinstance(data, Splits) else load_splits(data, seed=config.split_seed)
    labels = splits.label_names
    if not labels:
        raise LeanlmError(f"{splits.name} is question-answering data; fine-tune it with QAFinetuneConfig "
                          "(--task question-answering)")
    # everything random in the run (a fresh head, the adapter's initial weights) follows the training seed
    torch.manual_seed(config.loop.seed)
    if isinstance(model, LeanModel):
        if model.task != "sequence-classification" or (model.labels and list(model.labels) != list(labels)):
            raise LeanlmError("pass a model name or directory; a fresh classification head is built for the labels")
        clf = model
    else:
        base = load(model)
        if base.task == "causal-lm":
            raise LeanlmError(f"{model} is a decoder; fine-tuning for classification needs an encoder")
        if base.record.techniques:
            same_head = base.task == "sequence-classification" and list(base.labels or []) == list(labels)
            if not (config.peft and same_head):
                raise LeanlmError("fine-tune the float model, then compress it (this one is already compressed; "
                                  "only --peft trains on a compressed classifier with the same labels)")
            clf = base  # PEFT on a compressed classifier (QLoRA style): its quantized weights stay frozen
        else:
            # the new head is random: re-seed after loading the base, so its weights do not depend on what loading drew
            torch.manual_seed(config.loop.seed)
            clf = load(base.path or model, task="sequence-classification", labels=labels)
            clf.record.base_model = base.record.base_model
    if config.threads:
        torch.set_num_threads(config.threads)
    train = splits.train.head(config.train_size) if config.train_size else splits.train
    val = splits.validation.head(config.eval_size) if config.eval_size else splits.validation
    bs, ml = config.batch_size, config.max_length
    steps_per_epoch = (len(train) + bs - 1) // bs

    def loss_fn(module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return module(**batch).loss

    adapter = adapt_(clf, config.peft, total_steps(config.loop, steps_per_epoch)) if config.peft else None
    result: TrainResult = train_loop(
        clf.module,
        lambda epoch: _batches(clf, train, bs, ml, config.loop.seed * 1000 + epoch, shuffle=True,
                               bucket_window=config.bucket_window),
        steps_per_epoch,
        loss_fn,
        lambda module: accuracy(clf, val, max_length=ml),
        config.loop,
        trainable=adapter.trainable if adapter else None,
        hooks=hooks,
        progress=progress,
        grad_hooks=adapter.grad_hooks if adapter else (),
    )
    if adapter is not None:
        merge_(clf, adapter, texts=list(val.texts[:64]))
    test_acc = accuracy(clf, splits.test, max_length=ml)
    clf.record.data = {**splits.describe(), "train_used": len(train), "validation_used": len(val)}
    clf.record.training = {"config": config.to_dict(), "result": result.to_dict()}
    clf.record.metrics["validation"] = {"accuracy": result.best_score}
    clf.record.metrics["test"] = {"accuracy": test_acc, "n": len(splits.test)}
    if adapter is not None:
        clf.record.training["peft"] = adapter.info
    if output is not None and is_main_process():  # under torchrun, rank 0 writes the one model directory
        if adapter is not None:
            save_with_adapter(clf, adapter, output, overwrite=overwrite)
        else:
            clf.save(output, overwrite=overwrite)
    return clf


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def summary(model: LeanModel) -> dict[str, Any]:
    """The numbers a person wants after fine-tuning."""
    t = model.record.training or {}
    return {"test_accuracy": model.record.metrics.get("test", {}).get("accuracy"),
            "validation_accuracy": model.record.metrics.get("validation", {}).get("accuracy"),
            "steps": t.get("result", {}).get("steps"), "seconds": t.get("result", {}).get("seconds"),
            "split_seed": (model.record.data or {}).get("seed")}
