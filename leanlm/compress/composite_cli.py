"""`leanlm ensemble OUT MEMBER MEMBER... [--mode mean|vote] [--weights 2,1,1]` and
`leanlm cascade OUT SMALL LARGE --dataset NAME [--threshold T | --target-accuracy A | --target-escalation S]`.

Options after the model directories come from the config dataclasses (EnsembleConfig,
CascadeConfig) through the quantize CLI's `parse_options`, so a new config field is a new flag.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from leanlm.compress.quantize.cli import parse_options
from leanlm.errors import LeanlmError

_EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}


def _split(args: list[str]) -> tuple[list[str], list[str]]:
    """Model directories up to the first --option; the options after them."""
    i = next((k for k, a in enumerate(args) if a.startswith("--")), len(args))
    return args[:i], args[i:]


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise LeanlmError(f"{out} already exists; choose another output or pass --overwrite")


def register(app: typer.Typer) -> None:
    @app.command("ensemble", context_settings=_EXTRA)
    def ensemble_cmd(
        ctx: typer.Context,
        out: Path = typer.Argument(..., help="New model directory to write."),
        members: List[str] = typer.Argument(..., help="Two or more member model directories, then options "
                                                       "(--mode mean|vote, --weights 2,1)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
    ) -> None:
        """Combine saved classifiers into one ensemble model directory (mean of probabilities or vote)."""
        from leanlm.compress.ensemble import EnsembleConfig, compose

        paths, rest = _split(list(members) + list(ctx.args))
        config = EnsembleConfig(**parse_options(EnsembleConfig, rest))
        _check_out(out, overwrite)
        m = compose(paths, config, output=out, overwrite=overwrite)
        weights = ",".join(f"{w:g}" for w in config.weights) if config.weights else "equal"
        typer.echo(f"wrote {out}: ensemble of {len(paths)} ({config.mode}, weights {weights}), "
                   f"task {m.task}, labels {m.labels}")

    @app.command("cascade", context_settings=_EXTRA)
    def cascade_cmd(
        ctx: typer.Context,
        out: Path = typer.Argument(..., help="New model directory to write."),
        small: str = typer.Argument(..., help="The small, fast model directory (answers first)."),
        large: str = typer.Argument(..., help="The large model directory (answers escalated inputs)."),
        dataset: Optional[str] = typer.Option(None, "--dataset", help="Labelled dataset whose validation split "
                                                                     "calibrates the threshold."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
    ) -> None:
        """Small model first, large model for low-confidence inputs; threshold calibrated on validation.

        Options: --threshold T | --target-accuracy A | --target-escalation S, --confidence max_prob|margin.
        """
        from leanlm.compress.cascade import CascadeConfig
        from leanlm.compress.ensemble import compose

        config = CascadeConfig(**parse_options(CascadeConfig, list(ctx.args)))
        _check_out(out, overwrite)
        m = compose([small, large], config, data=dataset, output=out, overwrite=overwrite)
        spec = m.record.extra["composite"]
        cal = spec.get("calibration")
        line = f"wrote {out}: cascade {Path(small).name} -> {Path(large).name}, threshold {spec['thresholds'][0]:.6g}"
        if cal:
            line += (f" ({config.confidence}); validation accuracy {100 * cal['accuracy']:.2f}% "
                     f"(small {100 * cal['small_accuracy']:.2f}%, large {100 * cal['large_accuracy']:.2f}%), "
                     f"escalated {100 * cal['escalated_share']:.1f}% of {cal['n']}")
        typer.echo(line)
