"""Extractive QA tokenization and span decoding, shared by fine-tuning, evaluation and the server.

A question and a context longer than the model's window become overlapping windows (document
stride): `[CLS] question [SEP] context-part [SEP]`. Training labels each window with the answer's
first and last token, or with [CLS] (token 0) when the answer is not wholly inside that window.
Decoding keeps, per question, the best span over all its windows: start <= end, at most
`max_answer_tokens` long, inside the context, scored p(start) * p(end) with each a softmax over
the window's context tokens (as the transformers question-answering pipeline scores it). Answers
carry character offsets into the context, so `context[start:end] == answer`.

Example:
    >>> w = windows(model.tokenizer, "Who sat?", "The cat sat on the mat.", limit=384, stride=128)
    >>> answer_windows(model.runner, [w], max_batch=32, pad_id=0)
    [{'answer': 'The cat', 'score': 0.41, 'start': 0, 'end': 7}]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from leanlm.artifact import LeanModel, span_logits
from leanlm.data.metrics import squad_metrics
from leanlm.errors import DataError, UnsupportedError

MAX_ANSWER_TOKENS = 30  # the default span cap; SQuAD answers are rarely longer
_INPUTS = ("input_ids", "token_type_ids", "attention_mask")


@dataclass
class Windows:
    """One question, tokenized: a list per window of token ids (and type ids), offsets, and which
    tokens belong to the context. `tokens` is the padded cost (the server's token budget)."""

    features: dict[str, list[list[int]]]
    offsets: list[list[tuple[int, int]]]
    in_context: list[list[bool]]
    context: str
    max_answer_tokens: int

    @property
    def tokens(self) -> int:
        return sum(len(ids) for ids in self.features["input_ids"])


def _require_fast(tokenizer: Any) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise UnsupportedError("this model's tokenizer gives no character offsets (needs a fast tokenizer)")


def _room(tokenizer: Any, question: str, limit: int) -> int:
    """Tokens left for the context in a window of `limit` ([CLS] question [SEP] context [SEP])."""
    q_tokens = len(tokenizer(question, add_special_tokens=False)["input_ids"])
    room = limit - q_tokens - 3
    if room < 8:  # too little left for a context worth searching
        raise DataError(f"the question is {q_tokens} tokens; this model takes at most {limit - 11}")
    return room


def windows(tokenizer: Any, question: str, context: str, limit: int, max_answer_tokens: int = MAX_ANSWER_TOKENS,
            stride: int | None = None) -> Windows:
    """Tokenize a question and its context into windows of at most `limit` tokens.

    Consecutive windows overlap by `stride` tokens (None: a quarter of the room left for the
    context), so an answer cut by one window's edge lies whole in the next. Raises
    UnsupportedError for a tokenizer without offsets, DataError for a question that leaves no room.
    """
    _require_fast(tokenizer)
    room = _room(tokenizer, question, limit)
    overlap = max(1, room // 4) if stride is None else max(1, min(stride, room // 2))
    enc = tokenizer(question, context, truncation="only_second", max_length=limit, stride=overlap,
                    return_overflowing_tokens=True, return_offsets_mapping=True)
    n = len(enc["input_ids"])
    keys = [k for k in _INPUTS if k in enc]
    return Windows(features={k: list(enc[k]) for k in keys}, offsets=[list(o) for o in enc["offset_mapping"]],
                   in_context=[[s == 1 for s in enc.sequence_ids(i)] for i in range(n)], context=context,
                   max_answer_tokens=max_answer_tokens)


def best_span(start_logits: torch.Tensor, end_logits: torch.Tensor, in_context: list[bool],
              max_answer_tokens: int) -> tuple[float, int, int]:
    """(score, first token, last token) of the most likely span inside the context."""
    n = len(in_context)
    mask = torch.tensor(in_context)
    if not mask.any():
        return -1.0, 0, 0
    p_start = torch.softmax(start_logits[:n].float().masked_fill(~mask, float("-inf")), dim=0)  # (T,)
    p_end = torch.softmax(end_logits[:n].float().masked_fill(~mask, float("-inf")), dim=0)  # (T,)
    scores = p_start[:, None] * p_end[None, :]  # (T, T): start i, end j
    band = torch.ones(n, n, dtype=torch.bool).triu().tril(max_answer_tokens - 1)  # i <= j < i + max
    scores = scores.masked_fill(~band, 0.0)
    best = int(scores.argmax())
    i, j = divmod(best, n)
    return float(scores[i, j]), i, j


def pad(features: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Windows padded to the longest one: (W, T) tensors (labels, if present, are kept as (W,))."""
    longest = max(len(f["input_ids"]) for f in features)
    fill = {"input_ids": pad_id, "token_type_ids": 0, "attention_mask": 0}
    out = {k: torch.tensor([f[k] + [fill[k]] * (longest - len(f[k])) for f in features])
           for k in features[0] if k in fill}
    for k in ("start_positions", "end_positions"):
        if k in features[0]:
            out[k] = torch.tensor([f[k] for f in features])
    return out


def answer_windows(runner: Callable[..., Any], items: Sequence[Windows], max_batch: int, pad_id: int,
                   device: Any = "cpu") -> list[dict[str, Any]]:
    """The best answer of each question: every window of every item, in forward passes of at most
    `max_batch` windows (one long context must not make one huge batch).

    Returns per item {"answer", "score", "start", "end"} (character offsets into its context).
    """
    flat = [(r, w) for r, item in enumerate(items) for w in range(len(item.offsets))]
    best: list[tuple[float, int, int, int]] = [(-2.0, 0, 0, 0)] * len(items)  # (score, window, i, j)
    with torch.inference_mode():
        for lo in range(0, len(flat), max_batch):
            chunk = flat[lo:lo + max_batch]
            feats = [{k: items[r].features[k][w] for k in items[r].features} for r, w in chunk]
            batch = {k: v.to(device) for k, v in pad(feats, pad_id).items()}
            starts, ends = span_logits(runner(**batch))  # (W, T) each
            for (r, w), s, e in zip(chunk, starts.cpu(), ends.cpu()):
                score, i, j = best_span(s, e, items[r].in_context[w], items[r].max_answer_tokens)
                if score > best[r][0]:
                    best[r] = (score, w, i, j)
    out = []
    for item, (score, w, i, j) in zip(items, best):
        start, end = item.offsets[w][i][0], item.offsets[w][j][1]
        out.append({"answer": item.context[start:end], "score": max(score, 0.0), "start": start, "end": end})
    return out


def predict_answers(model: LeanModel, examples: Sequence[Any], max_length: int = 384, stride: int = 128,
                    batch_size: int = 32, max_answer_tokens: int = MAX_ANSWER_TOKENS) -> list[str]:
    """Answer text per example (anything with .question and .context), on any backend of `model`."""
    if model.task != "question-answering":
        raise UnsupportedError(f"answers need a question-answering model; this one is {model.task}")
    limit = min(max_length, model.max_length)
    pad_id = model.tokenizer.pad_token_id or 0
    answers: list[str] = []
    for lo in range(0, len(examples), batch_size):
        items = [windows(model.tokenizer, e.question, e.context, limit, max_answer_tokens, stride)
                 for e in examples[lo:lo + batch_size]]
        answers += [a["answer"] for a in answer_windows(model.runner, items, batch_size, pad_id, model.device)]
    return answers


def evaluate_answers(model: LeanModel, examples: Sequence[Any], max_length: int = 384, stride: int = 128,
                     batch_size: int = 32, max_answer_tokens: int = MAX_ANSWER_TOKENS) -> dict[str, Any]:
    """SQuAD exact match and F1 (percent, official normalisation) of `model` on QA examples.

    Returns {"exact_match", "f1", "n", "examples": the first few predictions}.
    """
    if len(examples) == 0:
        raise DataError("no questions to evaluate")
    preds = predict_answers(model, examples, max_length, stride, batch_size, max_answer_tokens)
    out = squad_metrics(preds, [[a.text for a in e.answers] for e in examples])
    out["examples"] = [{"question": e.question, "prediction": p, "answers": [a.text for a in e.answers[:3]]}
                       for e, p in zip(examples[:5], preds)]
    return out


# ----------------------------------------------------------------------------- training features

def train_features(tokenizer: Any, examples: Sequence[Any], max_length: int = 384,
                   stride: int = 128) -> list[dict[str, Any]]:
    """Training windows with start/end token labels, for `AutoModelForQuestionAnswering` losses.

    Each example's context is cut into windows as in `windows`; a window that holds the whole
    first gold answer is labelled with its first and last token, any other window with [CLS]
    (token 0: "no answer here"). Returns one dict per window: input_ids, token_type_ids,
    attention_mask, start_positions, end_positions, example (index into `examples`).
    """
    _require_fast(tokenizer)
    room = min(_room(tokenizer, e.question, max_length) for e in examples)
    enc = tokenizer([e.question for e in examples], [e.context for e in examples], truncation="only_second",
                    max_length=max_length, stride=max(1, min(stride, room // 2)), return_overflowing_tokens=True,
                    return_offsets_mapping=True)
    keys = [k for k in _INPUTS if k in enc]
    out = []
    for i, sample in enumerate(enc["overflow_to_sample_mapping"]):
        answer = examples[sample].answers[0]
        seq, offsets = enc.sequence_ids(i), enc["offset_mapping"][i]
        ctx = [t for t, s in enumerate(seq) if s == 1]
        start = end = 0
        if ctx and offsets[ctx[0]][0] <= answer.start and answer.end <= offsets[ctx[-1]][1]:
            start = next(t for t in ctx if offsets[t][1] > answer.start)
            end = next(t for t in reversed(ctx) if offsets[t][0] < answer.end)
        out.append({**{k: enc[k][i] for k in keys}, "start_positions": start, "end_positions": end,
                    "example": int(sample)})
    return out


def feature_batches(features: Sequence[dict[str, Any]], batch_size: int, pad_id: int, seed: int,
                    shuffle: bool) -> Iterator[dict[str, torch.Tensor]]:
    """Padded training batches of `train_features` windows; the order depends only on `seed`."""
    order = np.random.default_rng(seed).permutation(len(features)) if shuffle else np.arange(len(features))
    for lo in range(0, len(order), batch_size):
        yield pad([features[j] for j in order[lo:lo + batch_size]], pad_id)
