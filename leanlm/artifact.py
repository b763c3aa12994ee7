"""The model directory: one artifact that every stage reads and writes.

A model directory is a Hugging Face style folder (config.json, weights, tokenizer files) plus
`leanlm.json`, the record of where it came from (base model, task, data and seed, the ordered
technique configs applied) and what was measured. Directories are written to a temporary sibling
and renamed into place, so a failed run never leaves a half-written model and never replaces a
good one.

Example:
    >>> m = leanlm.load("minilm-l6", task="feature-extraction")
    >>> m.save("runs/minilm")            # writes runs/minilm atomically
    >>> leanlm.load("runs/minilm").record.base_model
    'minilm-l6'
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from leanlm.errors import ArtifactError

RECORD_FILE = "leanlm.json"
FORMAT_VERSION = 1
# masked-lm and pretraining (MLM + next-sentence heads) are what `leanlm pretrain` writes for encoders
TASKS = ("sequence-classification", "feature-extraction", "causal-lm", "question-answering", "masked-lm", "pretraining")


@dataclass
class Record:
    """Contents of leanlm.json: provenance and measurements of one model directory."""

    task: str
    base_model: str
    backend: str = "torch"
    weights: str = "model.safetensors"
    labels: list[str] | None = None
    data: dict[str, Any] | None = None
    techniques: list[dict[str, Any]] = field(default_factory=list)
    training: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: str = ""
    leanlm_version: str = ""
    format: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Record":
        known = {f.name for f in dataclasses.fields(cls)}
        missing = {"task", "base_model"} - set(data)
        if missing:
            raise ArtifactError(f"{RECORD_FILE} lacks required field(s) {sorted(missing)}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def technique_configs(self) -> list[Any]:
        from leanlm.config import config_from_dict

        return [config_from_dict(t) for t in self.techniques]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes `target` only if the block succeeds.

    The temp dir is a sibling of `target` (same filesystem, so the final rename is atomic). On
    any exception it is removed and `target` is untouched. With overwrite=True an existing target
    is swapped out only after the new one is complete.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise ArtifactError(f"{target} already exists; choose another output or pass overwrite")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file via temp file + rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_record(directory: Path, record: Record) -> None:
    """Fill file hashes and write leanlm.json (called last, inside the temp dir)."""
    from leanlm import __version__

    record.files = {
        p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != RECORD_FILE
    }
    record.created = record.created or _now()
    record.leanlm_version = __version__
    (directory / RECORD_FILE).write_text(json.dumps(record.to_dict(), indent=2, sort_keys=False))


def read_record(directory: str | os.PathLike, verify: bool = True) -> Record:
    """Read and check leanlm.json; refuse missing or corrupt files with a clear message."""
    directory = Path(directory)
    if not directory.exists():
        raise ArtifactError(f"model directory {directory} does not exist")
    if not directory.is_dir():
        raise ArtifactError(f"{directory} is not a directory")
    rec_path = directory / RECORD_FILE
    if not rec_path.exists():
        raise ArtifactError(f"{directory} is not a leanlm model directory (no {RECORD_FILE})")
    try:
        record = Record.from_dict(json.loads(rec_path.read_text()))
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{rec_path} is corrupt: {e}") from None
    if record.format > FORMAT_VERSION:
        raise ArtifactError(f"{directory} was written by a newer leanlm (format {record.format})")
    for name, info in record.files.items():
        p = directory / name
        if not p.exists():
            raise ArtifactError(f"{directory} is incomplete: {name} is missing")
        if p.stat().st_size != info.get("bytes"):
            raise ArtifactError(f"{directory} is corrupt: {name} has the wrong size")
        if verify and info.get("sha256") and _sha256(p) != info["sha256"]:
            raise ArtifactError(f"{directory} is corrupt: {name} does not match its checksum")
    if record.weights not in record.files:
        raise ArtifactError(f"{directory} is incomplete: weights file {record.weights} is missing")
    return record


def directory_size(directory: str | os.PathLike, weights_only: bool = True) -> int:
    """Bytes on disk of a model directory (weights files only by default)."""
    directory = Path(directory)
    files = [p for p in directory.iterdir() if p.is_file()]
    if weights_only:
        exts = (".safetensors", ".pt", ".bin", ".onnx", ".xml", ".gguf", ".data")
        files = [p for p in files if p.name.endswith(exts) or p.name.endswith(".onnx.data")]
    return sum(p.stat().st_size for p in files)


# --------------------------------------------------------------------------- in-memory model

# Hooks that rebuild a technique's module structure (no calibration) before weights load.
_RESTORES: dict[type, Callable[[torch.nn.Module, Any], None]] = {}


def restore(config_cls: type) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register how to rebuild `config_cls`'s module structure when loading saved weights.

    Techniques whose output is plain tensors or torchao tensor subclasses need none: the saved
    state dict is loaded with assign=True and carries the new tensor types itself.
    """

    def deco(fn: Callable[..., None]) -> Callable[..., None]:
        _RESTORES[config_cls] = fn
        return fn

    return deco


class LeanModel:
    """A loaded model directory: the module (or a runtime session), tokenizer and record.

    Calling it with tokenized inputs returns the task's primary output tensor: logits for
    sequence-classification and causal-lm, last hidden states for feature-extraction, and for
    question-answering the span logits (B, T, 2): [..., 0] start, [..., 1] end.
    """

    def __init__(self, module: Any, tokenizer: Any, record: Record, runner: Any = None):
        self.module = module
        self.tokenizer = tokenizer
        self.record = record
        # Non-torch backends put their session here; torch models run the module itself.
        self.runner = runner if runner is not None else module
        self.path: Path | None = None

    # -- properties -------------------------------------------------------------------------
    @property
    def task(self) -> str:
        return self.record.task

    @property
    def backend(self) -> str:
        return self.record.backend

    @property
    def labels(self) -> list[str] | None:
        return self.record.labels

    @property
    def max_length(self) -> int:
        cfg = getattr(self.module, "config", None) or getattr(self.runner, "config", None)
        n = getattr(cfg, "max_position_embeddings", None) or 512
        return int(min(n, getattr(self.tokenizer, "model_max_length", n) or n))

    @property
    def device(self) -> torch.device:
        if isinstance(self.module, torch.nn.Module):
            for p in self.module.parameters():
                return p.device
        return torch.device("cpu")

    def __repr__(self) -> str:
        techs = [t.get("type") for t in self.record.techniques]
        return f"LeanModel({self.record.base_model!r}, task={self.task}, backend={self.backend}, techniques={techs})"

    # -- running ----------------------------------------------------------------------------
    def encode(self, texts: list[str], max_length: int | None = None, padding: Any = True) -> dict[str, torch.Tensor]:
        """Tokenize a batch of texts into tensors (truncated to the model's maximum length)."""
        limit = min(max_length or self.max_length, self.max_length)
        enc = self.tokenizer(list(texts), padding=padding, truncation=True, max_length=limit, return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items()}

    @torch.inference_mode()
    def __call__(self, **batch: torch.Tensor) -> torch.Tensor:
        out = self.runner(**batch)
        if self.task == "question-answering":  # two outputs on every backend; one tensor for callers
            return torch.stack(span_logits(out), dim=-1)
        return primary_output(out)

    @torch.inference_mode()
    def predict(self, texts: list[str], batch_size: int = 32, max_length: int = 128) -> list[int]:
        """Predicted class ids for a list of texts (sequence-classification models)."""
        if self.task != "sequence-classification":
            raise ArtifactError(f"predict needs a sequence-classification model, this one is {self.task}")
        preds: list[int] = []
        for i in range(0, len(texts), batch_size):
            logits = self(**self.encode(texts[i : i + batch_size], max_length=max_length))
            preds.extend(logits.argmax(-1).tolist())
        return preds

    # -- copying and saving -----------------------------------------------------------------
    def clone(self) -> "LeanModel":
        """Deep copy of module and record (the tokenizer is shared; it is immutable in use)."""
        module = copy.deepcopy(self.module)
        runner = module if self.runner is self.module else copy.deepcopy(self.runner)
        other = LeanModel(module, self.tokenizer, copy.deepcopy(self.record), runner)
        other.path = self.path
        return other

    def add_technique(self, config: Any, **extra: Any) -> None:
        self.record.techniques.append(config.to_dict())
        if extra:
            self.record.extra.setdefault(config.name, {}).update(extra)

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write this model as a model directory, atomically. Returns the path."""
        from leanlm.runtime import get_backend

        path = Path(path)
        with atomic_dir(path, overwrite=overwrite) as tmp:
            self.tokenizer.save_pretrained(tmp)
            self.record.weights = get_backend(self.backend).save(self, tmp)
            write_record(tmp, self.record)
        self.path = path
        return path


def primary_output(out: Any) -> torch.Tensor:
    """The tensor a task cares about from a model output (HF ModelOutput, tuple or tensor)."""
    if isinstance(out, torch.Tensor):
        return out
    if getattr(out, "start_logits", None) is not None:  # question answering: (B, T, 2) span logits
        return torch.stack(span_logits(out), dim=-1)
    for key in ("logits", "prediction_logits", "last_hidden_state"):
        value = getattr(out, key, None)
        if value is None and isinstance(out, dict):
            value = out.get(key)
        if value is not None:
            return value
    if isinstance(out, (tuple, list)):
        return out[0]
    raise ArtifactError(f"cannot find a primary output in {type(out).__name__}")


def span_logits(out: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(start_logits, end_logits), each (B, T), of a question-answering output.

    Accepts what each backend returns: an HF ModelOutput (PyTorch), a (start, end) tuple (ONNX
    Runtime and OpenVINO sessions, whose graphs have the two outputs in that order) or the
    stacked (B, T, 2) tensor `LeanModel.__call__` returns.
    """
    start = getattr(out, "start_logits", None)
    if start is not None:
        return start, out.end_logits
    if isinstance(out, torch.Tensor):
        if out.ndim < 1 or out.shape[-1] != 2:
            raise ArtifactError(f"span logits must end in a dimension of 2 (start, end), got shape {tuple(out.shape)}")
        return out[..., 0], out[..., 1]
    if isinstance(out, (tuple, list)) and len(out) >= 2:
        return out[0], out[1]
    raise ArtifactError(f"cannot find start and end logits in {type(out).__name__}")


def replay_restores(module: torch.nn.Module, record: Record) -> None:
    """Rebuild module structure for each recorded technique that needs it, in order."""
    for cfg in record.technique_configs():
        fn = _RESTORES.get(type(cfg))
        if fn is not None:
            fn(module, cfg)


def load_dir(path: str | os.PathLike, verify: bool = True, device: str | None = None) -> LeanModel:
    """Load a leanlm model directory written by `LeanModel.save`."""
    from leanlm.runtime import get_backend

    path = Path(path)
    record = read_record(path, verify=verify)
    try:
        model = get_backend(record.backend).load(path, record, device=device)
    except ArtifactError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise ArtifactError(f"cannot load {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    model.path = path
    return model
