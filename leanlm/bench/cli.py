"""`leanlm evaluate` and `leanlm bench` commands."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer


def _load(name: str):
    from leanlm.errors import ArtifactError
    from leanlm.models.loading import load
    from leanlm.models.registry import BUNDLED

    p = Path(name).expanduser()
    if name not in BUNDLED and not p.exists():
        raise ArtifactError(f"model directory {name} does not exist (or give a bundled model: {', '.join(BUNDLED)})")
    return load(name)


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate_cmd(
        model: str = typer.Argument(..., help="A classifier or question-answering model directory."),
        dataset: Optional[str] = typer.Option(None, help="Dataset name or .csv/.jsonl/SQuAD .json file (its test split; "
                                              "default movie-snippets, squad for question-answering models)."),
        seed: int = typer.Option(0, help="Split seed (the same seed gives the same test split)."),
        batch_size: int = typer.Option(32, help="Texts per forward pass."),
        max_length: Optional[int] = typer.Option(None, help="Truncate texts to this many tokens (default 128; "
                                                  "question answering: window length, 384)."),
        stride: int = typer.Option(128, help="Question answering: tokens shared by consecutive windows."),
        limit: Optional[int] = typer.Option(None, help="Evaluate only the first N test examples."),
        as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
    ) -> None:
        """Accuracy, macro F1 and confusion matrix of a classifier, or SQuAD exact match and F1 of a
        question-answering model, on a dataset's test split (any backend: torch, onnxruntime, openvino)."""
        from leanlm.artifact import read_record
        from leanlm.bench.evaluate import evaluate
        from leanlm.data import load_splits

        p = Path(model).expanduser()
        qa = p.is_dir() and (p / "leanlm.json").exists() and read_record(p, verify=False).task == "question-answering"
        dataset = dataset or ("squad" if qa else "movie-snippets")
        test = load_splits(dataset, seed=seed).test  # unknown dataset fails before the model loads
        m = _load(model)
        res = evaluate(m, test, batch_size=batch_size, max_length=max_length or (384 if qa else 128), limit=limit,
                       stride=stride)
        if as_json:
            typer.echo(json.dumps(res))
            return
        if m.task == "question-answering":
            typer.echo(f"{model} ({m.backend}) on {dataset} (seed {seed}, test articles, n={res['n']}): "
                       f"exact match {res['exact_match']:.2f}  F1 {res['f1']:.2f}")
            return
        typer.echo(f"{model} on {dataset} (seed {seed}, test split, n={res['n']}): "
                   f"accuracy {100 * res['accuracy']:.2f}%  macro-F1 {100 * res['macro_f1']:.2f}%")
        width = max(len(l) for l in res["labels"])
        typer.echo("confusion (rows = true, columns = predicted): " + " ".join(res["labels"]))
        for label, row in zip(res["labels"], res["confusion"]):
            typer.echo(f"  {label:>{width}}  " + " ".join(f"{v:>6d}" for v in row))

    @app.command("bench")
    def bench_cmd(
        models: List[str] = typer.Argument(..., help="Model directories (or bundled names); the first is the reference."),
        dataset: Optional[str] = typer.Option(None, help="Dataset for accuracy (classifiers) and timing sentences."),
        out: Path = typer.Option(Path("reports/bench"), help="Report directory (results.json, report.md/html)."),
        repeats: int = typer.Option(20, help="Timed latency calls per model."),
        throughput_repeats: int = typer.Option(5, help="Timed throughput calls per model."),
        warmup: int = typer.Option(3, help="Untimed warm-up calls per shape."),
        threads: Optional[int] = typer.Option(None, help="Intra-op threads (default: all usable cores)."),
        seq_len: int = typer.Option(128, help="Tokens per input."),
        compiled: bool = typer.Option(False, "--compile", help="Also measure a torch.compile variant of each PyTorch model."),
        memory: bool = typer.Option(True, "--memory/--no-memory", help="Peak RSS in a child process per model."),
        eval_limit: Optional[int] = typer.Option(None, help="Evaluate on at most N test examples."),
        title: str = typer.Option("leanlm benchmark", help="Report title."),
    ) -> None:
        """Measure models side by side (latency, throughput, size, memory, accuracy); print and write a report."""
        from leanlm.bench.measure import BenchConfig, benchmark
        from leanlm.bench.timing import set_threads
        from leanlm.bench.report import write_report

        config = BenchConfig(seq_len=seq_len, repeats=repeats, throughput_repeats=throughput_repeats, warmup=warmup,
                             threads=threads, memory=memory, eval_limit=eval_limit)
        data = None
        if dataset:
            from leanlm.data import load_splits

            data = load_splits(dataset, seed=0).test
        loaded = {}
        for name in models:
            m = _load(name)
            key = Path(name).name or name
            k, cand = 2, key
            while cand in loaded:
                cand, k = f"{key} #{k}", k + 1
            loaded[cand] = m
        if compiled:
            from leanlm.runtime.torch_compile import compile_model

            set_threads(threads)  # inductor generates kernels for the current thread count
            shapes = [(config.latency_batch, seq_len), (config.throughput_batch, seq_len)]
            for key, m in list(loaded.items()):
                if m.backend == "torch":
                    typer.echo(f"compiling {key} ...", err=True)
                    loaded[f"{key} (compiled)"] = compile_model(m, shapes=shapes)
        res = benchmark(loaded, data=data, config=config)
        res.print()
        paths = write_report(res, out, title=title)
        typer.echo(f"wrote {paths['json']}, {paths['markdown']}, {paths['html']}")
