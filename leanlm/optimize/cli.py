"""`leanlm optimize MODEL_DIR OUT_DIR --task DATA ...`: the search, its report and the recommended model.

Exit codes: 0 with a recommended model; 3 when no candidate met the constraints (the report is
still written and the message names the closest candidates); 2 for a user error, e.g. a budget
too small for one trial (said before the search starts).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer


def _csv(value: Optional[str]) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


def _threads(value: Optional[str]) -> tuple[int, ...]:
    from leanlm.errors import ConfigError

    try:
        return tuple(int(t) for t in _csv(value))
    except ValueError:
        raise ConfigError(f"--threads takes comma-separated integers, e.g. 1,2; got {value!r}") from None


def register(app: typer.Typer) -> None:
    @app.command("optimize")
    def optimize_cmd(
        model_dir: Path = typer.Argument(..., help="The fine-tuned float classifier (leanlm model directory)."),
        out_dir: Path = typer.Argument(..., help="Search journal, builds, report.html and recommended/."),
        task: str = typer.Option("movie-snippets", "--task",
                                 help="Task data (dataset name or file): validation selects, test scores the frontier once."),
        max_accuracy_drop: float = typer.Option(1.0, "--max-accuracy-drop",
                                                help="Validation accuracy points a candidate may lose."),
        target: str = typer.Option("throughput", "--target", help="throughput | latency | size."),
        shape: str = typer.Option("32x128", "--shape", help="Throughput shape BATCHxSEQ (latency: batch 1)."),
        backend: str = typer.Option("auto", "--backend", help="auto | torch | onnxruntime | openvino."),
        budget_minutes: float = typer.Option(60.0, "--budget-minutes", help="Wall-clock budget of the whole run."),
        ray: Optional[str] = typer.Option(None, "--ray", help="Build candidates as Ray tasks: 'local' or a Ray address."),
        methods: Optional[str] = typer.Option(None, "--methods",
                                              help="Comma-separated search methods (default: all registered)."),
        threads: Optional[str] = typer.Option(None, "--threads",
                                              help="Comma-separated thread counts to search (default: all cores)."),
        trials: int = typer.Option(0, "--trials", help="Stop after this many trials (0: when the budget ends)."),
        min_speedup: float = typer.Option(1.0, "--min-speedup", help="Candidates must be at least this many times faster."),
        eval_limit: Optional[int] = typer.Option(None, "--eval-limit", help="Validation texts used (default: all)."),
        test_limit: Optional[int] = typer.Option(None, "--test-limit", help="Test texts used (default: all)."),
        peers: str = typer.Option("ov,nncf,ort", "--peers", help="Peer conversions in the final run (ov, nncf, ort; 'none')."),
        repeats: int = typer.Option(5, "--repeats", help="Timed batch-1 calls per candidate in the gate."),
        unlabeled: Optional[str] = typer.Option(None, "--unlabeled",
                                                help="Comma-separated datasets whose texts distillation may add "
                                                     "(the teacher labels them), e.g. imdb,amazon,tweets."),
        unlabeled_size: int = typer.Option(20000, "--unlabeled-size", help="Texts taken from each unlabeled dataset."),
        distill_epochs: int = typer.Option(2, "--distill-epochs", help="The most epochs a distillation candidate trains."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar or per-trial lines."),
    ) -> None:
        """Search compressions, runtimes and threads for the fastest model within an accuracy budget."""
        from leanlm.optimize.search import OptimizeConfig, optimize

        config = OptimizeConfig(
            data=task, max_accuracy_drop=max_accuracy_drop, target=target, shape=shape, backend=backend,
            budget_minutes=budget_minutes, ray=ray, methods=_csv(methods),
            threads=_threads(threads), trials=trials, min_speedup=min_speedup,
            eval_limit=eval_limit, test_limit=test_limit, peers=() if peers == "none" else _csv(peers), repeats=repeats,
            unlabeled=_csv(unlabeled), unlabeled_size=unlabeled_size, distill_epochs=distill_epochs)
        res = optimize(model_dir, out_dir, config, progress=not quiet)
        for line in (res.message, res.verdict):
            if line:
                typer.echo(line)
        typer.echo(f"report: {res.report.get('html')}")
        if res.impossible:
            sys.exit(3)  # typer.Exit's code is lost under leanlm.cli.main's standalone_mode=False
