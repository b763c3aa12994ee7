"""`leanlm finetune`: flags come from FinetuneConfig and LoopConfig; PEFT options from the PEFT config's fields.

Example:
    leanlm finetune runs/adalora --peft adalora --peft-opt init_r=12 --peft-opt target_r=4 --log-dir runs/adalora-logs
    torchrun --nproc_per_node 2 -m leanlm.cli finetune runs/ddp      # the same command on 2 processes
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


TASKS = ("sequence-classification", "question-answering")


def peft_config(method: Optional[str], options: List[str], targets: Optional[str]):
    """A PEFT config from `--peft NAME`, `--peft-opt key=value` pairs and `--peft-targets a,b`."""
    from leanlm.compress.quantize.cli import parse_options
    from leanlm.config import lookup
    from leanlm.errors import ConfigError
    from leanlm.train import peft  # noqa: F401  (registers lora and adalora)

    if method is None:
        if options or targets:
            raise ConfigError("--peft-opt and --peft-targets need --peft lora|adalora")
        return None
    cls = lookup(peft.FAMILY, method)
    args = []
    for opt in options:
        key, sep, value = opt.partition("=")
        if not sep:
            raise ConfigError(f"--peft-opt expects key=value, got {opt!r}")
        args.append(f"--{key.strip().replace('_', '-')}={value.strip()}")
    fields = parse_options(cls, args)
    if targets:
        fields["targets"] = peft.Targets(modules=tuple(t.strip() for t in targets.split(",") if t.strip()))
    return cls(**fields)


def register(app: typer.Typer) -> None:
    @app.command("finetune")
    def finetune_cmd(
        output: Path = typer.Argument(..., help="Model directory to write (must not exist unless --overwrite)."),
        model: str = typer.Option("minilm-l6", "--model", "-m", help="Base encoder: bundled name or directory."),
        task: str = typer.Option("sequence-classification", "--task",
                                 help="sequence-classification, or question-answering (span head, SQuAD data)."),
        dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Bundled dataset or .csv/.tsv/.jsonl/SQuAD .json file "
                                              "(default: movie-snippets; squad for question-answering)."),
        text_column: Optional[str] = typer.Option(None, help="Text column of a local file."),
        label_column: Optional[str] = typer.Option(None, help="Label column of a local file."),
        epochs: int = typer.Option(3, help="Training epochs (early stopping may end sooner)."),
        lr: float = typer.Option(5e-5, help="Peak learning rate (AdamW, linear warm-up and decay)."),
        batch_size: int = typer.Option(32, help="Examples per step."),
        max_length: Optional[int] = typer.Option(None, help="Truncate texts to this many tokens (default 128; "
                                                  "question-answering: window length, 384)."),
        stride: int = typer.Option(128, help="question-answering: tokens shared by consecutive windows of a long context."),
        train_size: int = typer.Option(0, help="Use only this many training examples (0 = all)."),
        eval_every: int = typer.Option(0, help="Validate every N optimizer steps (0 = each epoch)."),
        patience: int = typer.Option(0, help="Early-stopping patience in validations (0 = off)."),
        restore_best: bool = typer.Option(False, help="End on the best validation weights instead of the last "
                                          "(annealed) ones, which transfer better to other text."),
        bucket_window: int = typer.Option(50, help="Sort each window of N batches by length (less padding); 0 = uniform shuffle."),
        seed: int = typer.Option(0, help="Training seed."),
        split_seed: int = typer.Option(0, help="Seed of the train/validation/test split."),
        threads: int = typer.Option(0, help="Torch threads (0 = all cores)."),
        grad_accum: int = typer.Option(1, help="Batches summed into one optimizer step (effective batch = grad-accum x batch-size)."),
        bf16: bool = typer.Option(False, help="bf16 autocast for forward and loss (CPUs with AVX512-BF16/AMX)."),
        checkpoint_dir: Optional[Path] = typer.Option(None, help="Resumable checkpoints here; re-run the same command to resume."),
        checkpoint_every: int = typer.Option(0, help="Checkpoint every N optimizer steps (0 = at each validation)."),
        log_dir: Optional[Path] = typer.Option(None, help="TensorBoard event files and curves.png."),
        peft: Optional[str] = typer.Option(None, help="Parameter-efficient fine-tuning: lora or adalora."),
        peft_opt: List[str] = typer.Option([], help="PEFT option key=value, repeatable (e.g. r=8, target_r=4, tinit=10)."),
        peft_targets: Optional[str] = typer.Option(None, help="Comma-separated module names that get adapters."),
        overwrite: bool = typer.Option(False, help="Replace OUTPUT if it exists (only after success)."),
    ) -> None:
        """Fine-tune an encoder for text classification (all weights, LoRA or AdaLoRA) or extractive
        question answering (--task question-answering) and save a model directory."""
        from leanlm.data import load_splits
        from leanlm.errors import LeanlmError, did_you_mean
        from leanlm.train.finetune import FinetuneConfig, finetune, is_main_process, summary
        from leanlm.train.loop import LoopConfig
        from leanlm.train.qa import QAFinetuneConfig, qa_summary, refuse_peft

        if task not in TASKS:
            raise LeanlmError(did_you_mean(task, TASKS, "fine-tuning task"))
        loop = LoopConfig(epochs=epochs, lr=lr, eval_every=eval_every, patience=patience, restore_best=restore_best,
                          seed=seed, grad_accum=grad_accum, bf16=bf16, checkpoint_every=checkpoint_every,
                          checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None,
                          log_dir=str(log_dir) if log_dir else None)
        qa = task == "question-answering"
        if qa:
            refuse_peft(peft)
            cfg = QAFinetuneConfig(loop=loop, batch_size=batch_size, max_length=max_length or 384, stride=stride,
                                   train_size=train_size, split_seed=split_seed, threads=threads)
        else:
            cfg = FinetuneConfig(loop=loop, batch_size=batch_size, max_length=max_length or 128, bucket_window=bucket_window,
                                 train_size=train_size,
                                 split_seed=split_seed, threads=threads, peft=peft_config(peft, peft_opt, peft_targets))
        if output.exists() and not overwrite:
            raise LeanlmError(f"{output} already exists; choose another output or pass --overwrite")
        dataset = dataset or ("squad" if qa else "movie-snippets")
        splits = load_splits(dataset, seed=split_seed, text_column=text_column, label_column=label_column)
        m = finetune(model, splits, cfg, output=output, overwrite=overwrite)
        if not is_main_process():
            return
        if qa:
            s = qa_summary(m)
            typer.echo(f"test exact match {s['test_exact_match']:.2f}  F1 {s['test_f1']:.2f} (validation F1 "
                       f"{s['validation_f1']:.2f}, {s['steps']} steps, {s['seconds']} s, split seed {split_seed}) -> {output}")
            return
        s = summary(m)
        p = (m.record.training or {}).get("peft")
        extra = f", {p['trainable_params']:,} of {p['base_params']:,} parameters trained ({cfg.peft.name})" if p else ""
        typer.echo(f"test accuracy {s['test_accuracy']:.4f} (validation {s['validation_accuracy']:.4f}, "
                   f"{s['steps']} steps, {s['seconds']} s, split seed {split_seed}{extra}) -> {output}")
