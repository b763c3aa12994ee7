"""`leanlm prune MODEL OUT METHOD [--option value ...] --calibration DATASET` and `leanlm prune --list`.

Options come from the method's config fields, exactly as for `leanlm quantize` (same parser).
Calibration texts are the dataset's train split; for a classifier whose labels match the
dataset's, their labels drive the importance scores (otherwise the model's own predictions do).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from leanlm.compress.quantize.cli import _list_methods, calibration_texts, parse_options
from leanlm.errors import LeanlmError


def calibration_labels(name: str, size: int, model: Any) -> list[int] | None:
    """Train-split labels of dataset `name` as the model's class ids, or None (no usable labels)."""
    from leanlm.data import load_splits
    from leanlm.data.registry import TEXT_CORPORA

    if model.task != "sequence-classification" or name in TEXT_CORPORA or not model.labels:
        return None
    train = load_splits(name).train
    if set(train.label_names) != set(model.labels) or len(train.label_names) != len(model.labels):
        return None  # another label set: the model's own predictions are the honest target
    to_model = [list(model.labels).index(n) for n in train.label_names]
    return [to_model[label] for label in train.labels[:size]]


def register(app: typer.Typer) -> None:
    @app.command("prune", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def prune_cmd(
        ctx: typer.Context,
        model: Optional[str] = typer.Argument(None, help="Model directory or bundled model name."),
        out: Optional[Path] = typer.Argument(None, help="New model directory to write."),
        method: Optional[str] = typer.Argument(None, help="Pruning method (see --list)."),
        calibration: Optional[str] = typer.Option(None, "--calibration", help="Dataset (train split) or text corpus for importance scores."),
        calibration_size: int = typer.Option(128, "--calibration-size", help="Number of calibration texts."),
        max_length: int = typer.Option(128, "--max-length", help="Tokens per calibration text."),
        batch_size: int = typer.Option(16, "--batch-size", help="Calibration texts per forward/backward pass."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
        list_methods: bool = typer.Option(False, "--list", help="List methods and their options, then exit."),
    ) -> None:
        """Prune a model into a new model directory: METHOD options come from its config (--list)."""
        import leanlm
        from leanlm.artifact import directory_size
        from leanlm.compress.prune import FAMILY, PruneContext, config_class
        from leanlm.compress.prune._importance import param_count

        if list_methods:
            _list_methods(FAMILY)
            return
        if not (model and out and method):
            raise LeanlmError("usage: leanlm prune MODEL OUT METHOD [--option value ...] --calibration DATASET; "
                              "`leanlm prune --list` shows methods")
        cls = config_class(method)
        config = cls(**parse_options(cls, list(ctx.args)))
        if out.exists() and not overwrite:
            raise LeanlmError(f"{out} already exists; choose another output or pass --overwrite")
        if calibration_size < 1 or batch_size < 1:
            raise LeanlmError("--calibration-size and --batch-size must be >= 1")
        m = leanlm.load(model)
        texts = calibration_texts(calibration, calibration_size) if calibration else None
        labels = calibration_labels(calibration, len(texts or []), m) if calibration else None
        before = param_count(m.module) if hasattr(m.module, "parameters") else 0
        leanlm.prune_(m, config, PruneContext(calibration=texts, labels=labels, max_length=max_length,
                                              batch_size=batch_size))
        if calibration:
            m.record.extra.setdefault(config.name, {})["calibration"] = {
                "dataset": calibration, "texts": len(texts or []), "labels": labels is not None}
        m.save(out, overwrite=overwrite)
        after = param_count(m.module)
        size = directory_size(out)
        typer.echo(f"wrote {out} ({config.name}): params {before / 1e6:.2f}M -> {after / 1e6:.2f}M "
                   f"({100 * (1 - after / max(before, 1)):.1f}% fewer), {size / 1e6:.1f} MB weights")
