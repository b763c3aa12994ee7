"""`leanlm factorize MODEL OUT [--energy 0.9 | --rank 64 | --size-ratio 0.5] [--whiten --calibration DATASET]`.

Options come from the `LowRank` config fields (as for `leanlm quantize`), coerced to their types.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from leanlm.errors import LeanlmError


def register(app: typer.Typer) -> None:
    @app.command("factorize", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def factorize_cmd(
        ctx: typer.Context,
        model: str = typer.Argument(..., help="Model directory or bundled model name."),
        out: Path = typer.Argument(..., help="New model directory to write."),
        calibration: Optional[str] = typer.Option(None, "--calibration", help="Dataset (train split) or text corpus for --whiten."),
        calibration_size: int = typer.Option(128, "--calibration-size", help="Number of calibration texts."),
        max_length: int = typer.Option(128, "--max-length", help="Tokens per calibration text."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
    ) -> None:
        """Low-rank factorize linear layers into a new model directory; options from the svd config
        (--energy, --rank, --size-ratio, --targets, --only-if-smaller, --whiten, --samples, --damp)."""
        import leanlm
        from leanlm.compress.lowrank import LowRank, factorize_
        from leanlm.compress.quantize import QuantContext
        from leanlm.compress.quantize.cli import calibration_texts, parse_options

        config = LowRank(**parse_options(LowRank, list(ctx.args)))
        if out.exists() and not overwrite:
            raise LeanlmError(f"{out} already exists; choose another output or pass --overwrite")
        if calibration_size < 1:
            raise LeanlmError("--calibration-size must be >= 1")
        if config.whiten and not calibration:
            raise LeanlmError("factorize --whiten needs --calibration DATASET (activation statistics come from its texts)")
        m = leanlm.load(model)
        texts = calibration_texts(calibration, calibration_size) if calibration else None
        factorize_(m, config, QuantContext(calibration=texts, max_length=max_length))
        info = m.record.extra[config.name]
        if calibration:
            info["calibration"] = {"dataset": calibration, "texts": len(texts or [])}
        m.save(out, overwrite=overwrite)
        before, after = info["params_before"], info["params_after"]
        typer.echo(f"wrote {out} (svd): params {before / 1e6:.2f}M -> {after / 1e6:.2f}M ({after / before:.1%}); "
                   f"{info['factorized']} layers factorized, {info['kept_dense']} kept dense (factorizing would not shrink them)")
