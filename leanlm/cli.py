"""The `leanlm` command. Subcommands mirror the Python verbs.

Each area may add its own commands from its own module with a `register(app)` function listed in
`_COMMAND_MODULES`, so new families plug in without editing this file's commands. Every
LeanlmError becomes one red line on stderr and exit code 2; anything else is a bug and keeps its
traceback.
"""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from leanlm.errors import LeanlmError

app = typer.Typer(
    name="leanlm",
    help="Make transformer language models fast and cheap at inference, and prove it with measurements.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Modules that add their own subcommands (each has `register(app: typer.Typer) -> None`).
_COMMAND_MODULES = [
    "leanlm.train.cli",
    "leanlm.train.pretrain_cli",
    "leanlm.compress.quantize.cli",
    "leanlm.compress.prune.cli",
    "leanlm.compress.lowrank_cli",
    "leanlm.compress.composite_cli",
    "leanlm.compress.recipe_cli",
    "leanlm.compress.distill_cli",
    "leanlm.bench.cli",
    "leanlm.generate.cli",
    "leanlm.serve.cli",
    "leanlm.optimize.cli",
    "leanlm.demo",
]


def fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@app.command("models")
def models_cmd() -> None:
    """List the bundled models (real weights that load offline)."""
    from rich.console import Console
    from rich.table import Table

    from leanlm.models.registry import BUNDLED

    t = Table("name", "kind", "package", "description")
    for s in BUNDLED.values():
        t.add_row(s.name, s.kind, s.package, s.description)
    Console().print(t)


@app.command("datasets")
def datasets_cmd() -> None:
    """List the bundled datasets (real data read from registry packages)."""
    from rich.console import Console
    from rich.table import Table

    from leanlm.data.registry import DATASETS

    t = Table("name", "description", "source")
    for s in DATASETS.values():
        t.add_row(s.name, s.description, s.source)
    Console().print(t)


@app.command("embed")
def embed_cmd(
    model: str = typer.Argument(..., help="Bundled name (minilm-l6) or model directory."),
    texts: List[str] = typer.Argument(..., help="Texts to embed."),
    max_length: Optional[int] = typer.Option(None, help="Truncate to this many tokens."),
    batch_size: int = typer.Option(32, help="Texts per forward pass."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write a .npy matrix here instead of JSON on stdout."),
) -> None:
    """Sentence embeddings (mean pooling, L2-normalised), printed as JSON or saved as .npy."""
    import numpy as np

    from leanlm.models.embed import embed

    E = embed(model, texts, batch_size=batch_size, max_length=max_length)
    if output:
        np.save(output, E)
        typer.echo(f"wrote {E.shape[0]}x{E.shape[1]} embeddings to {output}")
    else:
        json.dump({"shape": list(E.shape), "embeddings": E.round(6).tolist()}, sys.stdout)
        sys.stdout.write("\n")


@app.command("info")
def info_cmd(model_dir: Path = typer.Argument(..., help="A leanlm model directory.")) -> None:
    """Show a model directory's record (leanlm.json): provenance, techniques, measurements."""
    from leanlm.artifact import read_record

    rec = read_record(model_dir)
    typer.echo(json.dumps(rec.to_dict(), indent=2))


for _mod in _COMMAND_MODULES:
    try:
        importlib.import_module(_mod).register(app)
    except ModuleNotFoundError as _e:
        # Only tolerate the command module itself being absent, never a missing dependency inside it.
        if not (_e.name and (_mod == _e.name or _mod.startswith(_e.name + "."))):
            raise


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point: run the app, turning user errors into one line and a non-zero exit.

    Usage errors (a missing argument, an unknown option) print the command's usage line and a
    one-line reason, and exit 2, like every other user error.
    """
    try:  # typer >= 0.2x vendors click; the app raises that copy's exceptions, not click's
        from typer._click import exceptions as usage
    except ImportError:  # pragma: no cover - older typer on the real click
        from click import exceptions as usage

    try:
        # Without standalone mode click returns a `typer.Exit(code)`'s code instead of raising it.
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except LeanlmError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(130)
    except usage.NoArgsIsHelpError as e:
        e.show()  # `leanlm` alone: the help (rich help is already printed), as click would
        sys.exit(2)
    except usage.ClickException as e:
        ctx = getattr(e, "ctx", None)
        if ctx is not None:
            typer.echo(ctx.get_usage(), err=True)
        reason = " ".join(e.format_message().split())  # one line, however click wrapped it
        hint = " (see --help)" if isinstance(e, usage.UsageError) else ""
        typer.secho(f"error: {reason}{hint}", fg=typer.colors.RED, err=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
