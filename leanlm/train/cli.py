"""`leanlm finetune`: flags come from FinetuneConfig and LoopConfig."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("finetune")
    def finetune_cmd(
        output: Path = typer.Argument(..., help="Model directory to write (must not exist unless --overwrite)."),
        model: str = typer.Option("minilm-l6", "--model", "-m", help="Base encoder: bundled name or directory."),
        dataset: str = typer.Option("movie-snippets", "--dataset", "-d", help="Bundled dataset or .csv/.tsv/.jsonl file."),
        text_column: Optional[str] = typer.Option(None, help="Text column of a local file."),
        label_column: Optional[str] = typer.Option(None, help="Label column of a local file."),
        epochs: int = typer.Option(3, help="Training epochs (early stopping may end sooner)."),
        lr: float = typer.Option(5e-5, help="Peak learning rate (AdamW, linear warm-up and decay)."),
        batch_size: int = typer.Option(32, help="Examples per step."),
        max_length: int = typer.Option(128, help="Truncate texts to this many tokens."),
        train_size: int = typer.Option(0, help="Use only this many training examples (0 = all)."),
        eval_every: int = typer.Option(0, help="Validate every N steps (0 = each epoch)."),
        patience: int = typer.Option(2, help="Early-stopping patience in validations (0 = off)."),
        seed: int = typer.Option(0, help="Training seed."),
        split_seed: int = typer.Option(0, help="Seed of the train/validation/test split."),
        threads: int = typer.Option(0, help="Torch threads (0 = all cores)."),
        overwrite: bool = typer.Option(False, help="Replace OUTPUT if it exists (only after success)."),
    ) -> None:
        """Fine-tune an encoder for text classification and save a model directory."""
        from leanlm.data import load_splits
        from leanlm.train.finetune import FinetuneConfig, finetune, summary
        from leanlm.train.loop import LoopConfig

        cfg = FinetuneConfig(
            loop=LoopConfig(epochs=epochs, lr=lr, eval_every=eval_every, patience=patience, seed=seed),
            batch_size=batch_size, max_length=max_length, train_size=train_size, split_seed=split_seed,
            threads=threads,
        )
        if output.exists() and not overwrite:
            from leanlm.errors import LeanlmError

            raise LeanlmError(f"{output} already exists; choose another output or pass --overwrite")
        splits = load_splits(dataset, seed=split_seed, text_column=text_column, label_column=label_column)
        m = finetune(model, splits, cfg, output=output, overwrite=overwrite)
        s = summary(m)
        typer.echo(f"test accuracy {s['test_accuracy']:.4f} (validation {s['validation_accuracy']:.4f}, "
                   f"{s['steps']} steps, {s['seconds']} s, split seed {split_seed}) -> {output}")
