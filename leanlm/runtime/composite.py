"""Composite backend: a model directory that runs other model directories (ensembles, cascades).

A composite directory holds the tokenizer, `composite.json` (its "weights": the member list) and
`leanlm.json` whose `extra.composite` says what it is:

    {"kind": "cascade" | "ensemble",
     "members": [{"path": "../small", "sha256": <sha256 of the member's leanlm.json>, ...}, ...],
     ...the kind's parameters (cascade: thresholds, confidence; ensemble: mode, weights)}

Member paths are relative to the composite directory when possible, else absolute. Loading
loads each member with its own backend (torch, onnxruntime, openvino, ...), refuses a member
that is missing or whose leanlm.json changed since the composite was saved, and checks that
the members share the tokenizer (vocabulary) and the label set. The runner takes the same
batches as any model (`runner(**batch) -> logits`), so evaluate, predict and benchmark work
unchanged.

Example:
    >>> m = leanlm.load("runs/cascade")          # backend "composite", kind "cascade"
    >>> m.predict(texts); m.runner.stats()       # {'seen': 100, 'escalated': 23, 'escalated_share': 0.23, ...}
"""
from __future__ import annotations

import copy
import json
import os
import types
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from leanlm.artifact import RECORD_FILE, LeanModel, Record, _sha256, directory_size, load_dir, primary_output
from leanlm.errors import ArtifactError, ConfigError, UnsupportedError, did_you_mean
from leanlm.models.compat import labels_mismatch, vocab_mismatch
from leanlm.runtime import register_backend

BACKEND = "composite"
MANIFEST = "composite.json"


# ----------------------------------------------------------------------------- members

def record_sha(directory: str | os.PathLike) -> str:
    """sha256 of a model directory's leanlm.json (what a composite pins its members by)."""
    path = Path(directory) / RECORD_FILE
    if not path.exists():
        raise ArtifactError(f"{directory} is not a leanlm model directory (no {RECORD_FILE})")
    return _sha256(path)


def member_label(model: LeanModel) -> str:
    return model.path.name if model.path is not None else model.record.base_model


def check_members(members: Sequence[LeanModel], tasks: Sequence[str]) -> None:
    """Same task (one of `tasks`), same tokenizer vocabulary, same labels in the same order."""
    if len(members) < 2:
        raise ConfigError(f"a composite model needs at least two members, got {len(members)}")
    first = members[0]
    for m in members:
        if m.task not in tasks:
            raise UnsupportedError(f"member {member_label(m)} is a {m.task} model; this composite takes "
                                   f"{' or '.join(tasks)} members")
        if m.task != first.task:
            raise ConfigError(f"members mix tasks: {member_label(first)} is {first.task}, {member_label(m)} is {m.task}")
    for m in members[1:]:
        if vocab_mismatch(first, m):
            raise ConfigError(f"members must share the tokenizer: {member_label(m)}'s vocabulary differs from "
                              f"{member_label(first)}'s")
        if labels_mismatch(first, m):
            raise ConfigError(f"members must share the label set: {member_label(m)} has {m.labels}, "
                              f"{member_label(first)} has {first.labels}")


def pinned(model: LeanModel) -> dict[str, Any]:
    """A member's reference (absolute path + sha256 of its leanlm.json); it must be saved and unchanged."""
    if model.path is None:
        raise ConfigError(f"member {model.record.base_model!r} has no model directory; save it first "
                          "(a composite references its members by path)")
    path = Path(model.path).resolve()
    on_disk = read_member_record(path)
    if on_disk.backend != model.backend or on_disk.techniques != model.record.techniques:
        raise ConfigError(f"member {path.name} was changed since it was loaded from {path}; save it to a new "
                          "directory and use that")
    return {"path": str(path), "sha256": record_sha(path), "backend": model.backend,
            "base_model": model.record.base_model}


def read_member_record(path: Path) -> Record:
    from leanlm.artifact import read_record

    return read_record(path, verify=False)


def _relative(target: Path, start: Path) -> str:
    try:
        return os.path.relpath(target, start)
    except ValueError:  # another drive (Windows): only an absolute path can say where it is
        return str(target)


def load_members(directory: Path, refs: Sequence[dict[str, Any]], device: str | None = None) -> list[LeanModel]:
    """Load the members a composite directory references, refusing missing or changed ones."""
    out = []
    for ref in refs:
        path = Path(ref["path"])
        path = path if path.is_absolute() else (directory / path)
        if not (path / RECORD_FILE).exists():
            raise ArtifactError(f"{directory}: member {ref['path']} is missing (looked in {path.resolve()})")
        if record_sha(path) != ref["sha256"]:
            raise ArtifactError(f"{directory}: member {ref['path']} changed since this composite was saved "
                                "(its leanlm.json differs); rebuild the composite")
        out.append(load_dir(path, device=device))
    return out


# ----------------------------------------------------------------------------- runners

def _max_prob(probs: torch.Tensor) -> torch.Tensor:
    return probs.max(-1).values


def _margin(probs: torch.Tensor) -> torch.Tensor:
    top = probs.topk(2, dim=-1).values
    return top[:, 0] - top[:, 1]


# confidence of each row, from class probabilities (B, C) -> (B,)
CONFIDENCE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"max_prob": _max_prob, "margin": _margin}


def confidence(logits: torch.Tensor, kind: str = "max_prob") -> torch.Tensor:
    """Per-row confidence of a classifier's logits: max softmax probability or top-1 minus top-2 margin."""
    if kind not in CONFIDENCE:
        raise ConfigError(did_you_mean(kind, list(CONFIDENCE), "confidence"))
    return CONFIDENCE[kind](torch.softmax(logits.float(), dim=-1))


def select_rows(batch: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """The batch restricted to `rows`, with padding columns no selected row needs dropped.

    Columns are kept where any selected row's attention mask is 1, so this works for right and
    left padding alike and the slice is exactly what tokenizing those texts alone would give.
    """
    n = next(iter(batch.values())).shape[0]
    out = {k: v[rows] if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == n else v
           for k, v in batch.items()}
    mask = out.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        keep = mask.bool().any(0)
        if not bool(keep.all()):
            width = mask.shape[1]
            out = {k: v[:, keep] if isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape[1] == width else v
                   for k, v in out.items()}
    return out


class CompositeRunner:
    """Runs member models; subclasses combine their outputs. `members[i]` is a LeanModel."""

    kind = ""

    def __init__(self, members: Sequence[LeanModel], refs: Sequence[dict[str, Any]]):
        self.members = list(members)
        self.refs = [dict(r) for r in refs]
        # LeanModel.max_length reads max_position_embeddings: the tightest member limit applies
        self.config = types.SimpleNamespace(max_position_embeddings=min(m.max_length for m in self.members))

    def params(self) -> dict[str, Any]:
        """The kind's parameters as stored in leanlm.json (extra.composite)."""
        return {}

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "members": self.refs, **self.params()}

    def artifact_bytes(self) -> int:
        """Weights on disk of all members (a composite directory holds none of its own; nested ones recurse)."""
        return sum(m.runner.artifact_bytes() if isinstance(m.runner, CompositeRunner) else directory_size(m.path)
                   for m in self.members if m.path is not None)

    def __call__(self, **batch: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def _member_logits(member: LeanModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return primary_output(member.runner(**batch)).float()


class EnsembleRunner(CompositeRunner):
    """Every member runs on the whole batch.

    Classifiers: mode "mean" averages the members' probabilities (weighted), "vote" takes the
    weighted majority of their predictions (ties go to the higher mean probability); either way
    the output is log-probabilities, so softmax/argmax read it like logits. Feature extractors
    ("mean" only): each member's token states are scaled so that their mean pooling is that
    member's unit-length sentence embedding, then averaged; `embed` therefore returns the
    re-normalised average of the members' embeddings.
    """

    kind = "ensemble"

    def __init__(self, members: Sequence[LeanModel], refs: Sequence[dict[str, Any]], mode: str = "mean",
                 weights: Sequence[float] | None = None):
        super().__init__(members, refs)
        if mode not in _COMBINE:
            raise ConfigError(did_you_mean(mode, list(_COMBINE), "ensemble mode"))
        if weights is not None and len(weights) != len(self.members):
            raise ConfigError(f"ensemble: {len(weights)} weights for {len(self.members)} members")
        if self.members[0].task == "feature-extraction" and mode != "mean":
            raise UnsupportedError("ensemble: feature-extraction members can only be averaged (mode 'mean')")
        self.mode = mode
        self.weights = [float(w) for w in weights] if weights is not None else None

    def params(self) -> dict[str, Any]:
        return {"mode": self.mode, "weights": self.weights}

    def _w(self) -> torch.Tensor:
        w = torch.tensor(self.weights or [1.0] * len(self.members), dtype=torch.float32)
        return w / w.sum()

    @torch.inference_mode()
    def __call__(self, **batch: torch.Tensor) -> torch.Tensor:
        each = [_member_logits(m, batch) for m in self.members]
        if len({o.shape for o in each}) != 1:
            raise UnsupportedError(f"ensemble: members' outputs differ in shape {sorted({tuple(o.shape) for o in each})}; "
                                   "feature-extraction members need the same hidden size")
        outs = torch.stack(each)  # (M, B, C) or (M, B, T, H)
        w = self._w().view(-1, *([1] * (outs.dim() - 1)))
        if self.members[0].task == "feature-extraction":
            return _mean_embeddings(outs, w, batch["attention_mask"])
        return _COMBINE[self.mode](outs, w)


def _mean_probs(logits: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    # logits (M, B, C) -> log of the weighted mean probability (B, C)
    return (torch.softmax(logits, -1) * w).sum(0).clamp_min(1e-30).log()


def _vote(logits: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    # weighted one-hot predictions (M, B, C) -> vote shares (B, C), in float64 so that the mean
    # probability can break ties without ever outweighing a real vote difference
    w = w.double()
    votes = (torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).double() * w).sum(0)
    mean = (torch.softmax(logits.double(), -1) * w).sum(0)
    winner = (votes + 1e-9 * mean).argmax(-1)
    out = votes.float().clamp_min(1e-12).log()
    rows = torch.arange(out.shape[0])
    top = out[rows, winner]
    tied = (out == top[:, None]).sum(-1) > 1  # equal shares: lift the winner one float step
    out[rows, winner] = torch.where(tied, torch.nextafter(top, torch.full_like(top, float("inf"))), top)
    return out


_COMBINE: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"mean": _mean_probs, "vote": _vote}


def _mean_embeddings(hidden: torch.Tensor, w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # hidden (M, B, T, H): scale member m's states by 1/|mean_pool(H_m)| so they pool to a unit vector
    m = mask.unsqueeze(0).unsqueeze(-1).to(hidden.dtype)  # (1, B, T, 1)
    pooled = (hidden * m).sum(2) / m.sum(2).clamp(min=1e-9)  # (M, B, H)
    scale = 1.0 / pooled.norm(dim=-1).clamp(min=1e-12)  # (M, B)
    return (hidden * scale[..., None, None] * w).sum(0)


class CascadeRunner(CompositeRunner):
    """Stage 0 answers every input; rows whose confidence is below stage k's threshold go to stage k+1.

    Confidence exactly equal to the threshold is not escalated, so threshold 0 never escalates.
    Escalated rows are sliced out of the batch (padding trimmed to the longest of them), run on
    the next member only, and their logits replace the earlier ones. Counters: `stats()` and
    `reset_stats()`.
    """

    kind = "cascade"

    def __init__(self, members: Sequence[LeanModel], refs: Sequence[dict[str, Any]], thresholds: Sequence[float],
                 confidence: str = "max_prob", calibration: dict[str, Any] | None = None):
        super().__init__(members, refs)
        if len(thresholds) != len(self.members) - 1:
            raise ConfigError(f"cascade: {len(self.members)} stages need {len(self.members) - 1} threshold(s), "
                              f"got {len(thresholds)}")
        if confidence not in CONFIDENCE:
            raise ConfigError(did_you_mean(confidence, list(CONFIDENCE), "confidence"))
        self.thresholds = [float(t) for t in thresholds]
        self.confidence = confidence
        self.calibration = calibration
        self.reset_stats()

    def params(self) -> dict[str, Any]:
        return {"thresholds": self.thresholds, "confidence": self.confidence, "calibration": self.calibration}

    def reset_stats(self) -> None:
        self.seen = 0
        self.escalated = [0] * len(self.thresholds)  # rows sent on to stage k+1

    def stats(self) -> dict[str, Any]:
        """Inputs seen, inputs escalated past the first stage and that share, per-stage counts."""
        first = self.escalated[0] if self.escalated else 0
        return {"seen": self.seen, "escalated": first,
                "escalated_share": first / self.seen if self.seen else None, "per_stage": list(self.escalated)}

    @torch.inference_mode()
    def __call__(self, **batch: torch.Tensor) -> torch.Tensor:
        logits = _member_logits(self.members[0], batch)
        self.seen += logits.shape[0]
        rows = torch.arange(logits.shape[0])  # rows of the original batch still in play
        for k, threshold in enumerate(self.thresholds):
            conf = confidence(logits[rows], self.confidence)
            rows = rows[conf < threshold]
            self.escalated[k] += int(rows.numel())
            if rows.numel() == 0:
                break
            logits[rows] = _member_logits(self.members[k + 1], select_rows(batch, rows)).to(logits.dtype)
        return logits


_KINDS: dict[str, Callable[..., CompositeRunner]] = {"ensemble": EnsembleRunner, "cascade": CascadeRunner}


# ----------------------------------------------------------------------------- models and backend

def composite_model(kind: str, members: Sequence[LeanModel], refs: Sequence[dict[str, Any]], params: dict[str, Any],
                    techniques: Sequence[dict[str, Any]] = (), data: dict[str, Any] | None = None) -> LeanModel:
    """A LeanModel whose runner is a `kind` composite of `members` (refs: their pinned references)."""
    if kind not in _KINDS:
        raise ArtifactError(did_you_mean(kind, list(_KINDS), "composite kind"))
    runner = _KINDS[kind](members, refs, **params)
    first = members[0]
    record = Record(task=first.task, base_model=f"{kind}({', '.join(member_label(m) for m in members)})",
                    backend=BACKEND, weights=MANIFEST, labels=copy.deepcopy(first.labels), data=data,
                    techniques=[dict(t) for t in techniques], extra={"composite": runner.spec()})
    return LeanModel(None, first.tokenizer, record, runner=runner)


class CompositeBackend:
    name = BACKEND

    def save(self, model: LeanModel, directory: Path) -> str:
        runner = model.runner
        if not isinstance(runner, CompositeRunner):
            raise ArtifactError(f"composite backend cannot save a model whose runner is {type(runner).__name__}")
        refs = []
        for member, ref in zip(runner.members, runner.refs):
            path = Path(member.path).resolve() if member.path is not None else None
            if path is None or not (path / RECORD_FILE).exists():
                raise ArtifactError(f"member {ref['path']} is missing; a composite can only reference saved members")
            if record_sha(path) != ref["sha256"]:
                raise ArtifactError(f"member {path} changed since it was added to this composite; rebuild it")
            # `directory` is a temporary sibling of the final one, so a path relative to it stays valid
            refs.append({**ref, "path": _relative(path, directory.resolve())})
        spec = {**runner.spec(), "members": refs}
        model.record.extra["composite"] = spec
        (directory / MANIFEST).write_text(json.dumps(spec, indent=2) + "\n")
        return MANIFEST

    def load(self, directory: Path, record: Record, device: str | None = None) -> LeanModel:
        spec = dict(record.extra.get("composite") or {})
        kind, refs = spec.pop("kind", None), spec.pop("members", None)
        if kind not in _KINDS or not refs:
            raise ArtifactError(f"{directory}: {RECORD_FILE} lacks a valid extra.composite (kind and members)")
        members = load_members(Path(directory), refs, device)
        check_members(members, ("sequence-classification", "feature-extraction"))
        runner = _KINDS[kind](members, refs, **spec)
        return LeanModel(None, members[0].tokenizer, record, runner=runner)


register_backend(CompositeBackend())
