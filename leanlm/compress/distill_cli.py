"""`leanlm distill TEACHER OUT --student minilm-l3|layers:0,2,4|DIR --dataset NAME [--option value ...]`.

Options are not declared by hand: loop settings (`--epochs`, `--lr`, `--patience` ...) come from
LoopConfig's fields and the rest (`--temperature`, `--hidden-weight`, `--unlabeled imdb,tweets` ...)
from DistillConfig's, coerced to each field's type by the quantize CLI's parser.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import typer

from leanlm.errors import LeanlmError


def config_from_args(args: list[str]) -> Any:
    """A DistillConfig from `--name value` pairs; LoopConfig's flags fill its `loop`."""
    from leanlm.compress.distill import DistillConfig
    from leanlm.compress.quantize.cli import _flag, parse_options
    from leanlm.train.loop import LoopConfig

    own = {_flag(f.name) for f in dataclasses.fields(DistillConfig)}
    loop_flags = {_flag(f.name) for f in dataclasses.fields(LoopConfig)} - own  # --seed belongs to distill
    loop_args: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        key, sep, _ = args[i].partition("=")
        target = loop_args if key in loop_flags else rest
        target.append(args[i])
        if key in loop_flags and not sep and i + 1 < len(args):
            target.append(args[i + 1])
            i += 1
        i += 1
    options = parse_options(DistillConfig, rest)
    loop = parse_options(LoopConfig, loop_args)
    defaults = DistillConfig().loop
    loop.setdefault("seed", options.get("seed", 0))  # one --seed drives the whole run
    return DistillConfig(**options, loop=dataclasses.replace(defaults, **loop))


def register(app: typer.Typer) -> None:
    @app.command("distill", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def distill_cmd(
        ctx: typer.Context,
        teacher: str = typer.Argument(..., help="Teacher model directory (comma-separated directories: an ensemble)."),
        out: Path = typer.Argument(..., help="New model directory to write (must not exist unless --overwrite)."),
        student: str = typer.Option("minilm-l3", "--student", help="Bundled name, model directory, or layers:0,2,4 "
                                                                   "(teacher layers to keep)."),
        dataset: str = typer.Option("movie-snippets", "--dataset", "-d",
                                    help="Labelled dataset or .csv/.jsonl file; 'none' = only --unlabeled texts."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists (only after success)."),
    ) -> None:
        """Distill a teacher into a smaller student; options come from DistillConfig and LoopConfig
        (--epochs, --lr, --temperature, --alpha, --hidden-weight, --attention-weight, --embedding-weight,
        --unlabeled imdb,tweets, --unlabeled-size, --train-size, --seed ...)."""
        from leanlm.compress.distill import distill

        config = config_from_args(list(ctx.args))
        if out.exists() and not overwrite:
            raise LeanlmError(f"{out} already exists; choose another output or pass --overwrite")
        teachers = [t for t in teacher.split(",") if t]
        data = None if dataset.lower() == "none" else dataset
        m = distill(teachers if len(teachers) > 1 else teachers[0], student, data, config, output=out,
                    overwrite=overwrite)
        val, test = m.record.metrics.get("validation", {}), m.record.metrics.get("test", {})
        shown = {k: round(v, 4) for k, v in {**{f"validation_{k}": v for k, v in val.items()},
                                              **{f"test_{k}": v for k, v in test.items()}}.items()
                 if isinstance(v, float)}
        result = (m.record.training or {}).get("result", {})
        typer.echo(f"wrote {out} (distill, {result.get('steps')} steps, {result.get('seconds')} s): {shown}")
