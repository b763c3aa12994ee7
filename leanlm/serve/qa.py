"""Extractive question answering: POST /v1/answer {model, question, context} -> {answer, score, start, end}.

The handler tokenizes question + context on the event loop (so a bad request is a 400 before it
queues), splitting a context longer than the model's window into overlapping windows (document
stride, as in SQuAD fine-tuning); the batch function runs every window of every queued request in
forward passes of up to `max_batch` windows and keeps, per request, the best span over its windows:
start <= end, at most `max_answer_tokens` long, inside the context. `start`/`end` are character
offsets into the context, so `context[start:end] == answer`.

Example:
    >>> httpx.post(url + "/v1/answer", json={"question": "Who sat?", "context": "The cat sat on the mat."}).json()
    {'object': 'answer', 'model': 'qa', 'answer': 'The cat', 'score': 0.41, 'start': 0, 'end': 7, ...}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from fastapi import APIRouter, Request
from pydantic import Field, field_validator

from leanlm.serve.config import ServeConfig
from leanlm.serve.encoders import token_limit
from leanlm.serve.registry import ServedModel, capability
from leanlm.serve.schemas import ApiError, _Request, parse

router = APIRouter()

MAX_ANSWER_TOKENS = 30  # the default span cap; SQuAD answers are rarely longer


class AnswerRequest(_Request):
    """POST /v1/answer: {"model", "question", "context", "max_answer_tokens", "top_k"}; without a
    context the server's knowledge base supplies the `top_k` nearest passages (leanlm.serve.knowledge)."""

    question: str
    context: Optional[str] = None
    max_answer_tokens: int = Field(MAX_ANSWER_TOKENS, ge=1, le=512)
    top_k: int = Field(3, ge=1, le=20)

    @field_validator("question", "context")
    @classmethod
    def _nonempty(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not v.strip():
            raise ValueError("must not be empty")
        return v


@dataclass
class Windows:
    """One request, tokenized: a list per window of token ids (and type ids), offsets, and which
    tokens belong to the context. `tokens` is the padded cost, for ServeConfig.max_batch_tokens."""

    features: dict[str, list[list[int]]]
    offsets: list[list[tuple[int, int]]]
    in_context: list[list[bool]]
    context: str
    max_answer_tokens: int

    @property
    def tokens(self) -> int:
        return sum(len(ids) for ids in self.features["input_ids"])


def windows(tokenizer: Any, question: str, context: str, limit: int, max_answer_tokens: int = MAX_ANSWER_TOKENS,
            max_windows: int | None = None) -> Windows:
    """Tokenize a question and its context into windows of at most `limit` tokens.

    Consecutive windows overlap by a quarter of the room left for the context, so an answer cut by
    one window's edge lies whole in the next. Any problem is a 400 ApiError.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ApiError(400, "this model's tokenizer gives no character offsets (needs a fast tokenizer)",
                       param="model", code="unsupported_model")
    q_tokens = len(tokenizer(question, add_special_tokens=False)["input_ids"])
    room = limit - q_tokens - 3  # [CLS] question [SEP] context [SEP]
    if room < 8:  # too little left for a context worth searching
        raise ApiError(400, f"the question is {q_tokens} tokens; this model takes at most {limit - 11}",
                       param="question", code="context_length_exceeded")
    enc = tokenizer(question, context, truncation="only_second", max_length=limit, stride=max(1, room // 4),
                    return_overflowing_tokens=True, return_offsets_mapping=True)
    n = len(enc["input_ids"])
    if max_windows is not None and n > max_windows:
        raise ApiError(400, f"the context splits into {n} windows of {limit} tokens; at most {max_windows} "
                       "per request", param="context", code="context_length_exceeded")
    keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
    return Windows(features={k: list(enc[k]) for k in keys}, offsets=[list(o) for o in enc["offset_mapping"]],
                   in_context=[[s == 1 for s in enc.sequence_ids(i)] for i in range(n)], context=context,
                   max_answer_tokens=max_answer_tokens)


def best_span(start_logits: torch.Tensor, end_logits: torch.Tensor, in_context: list[bool],
              max_answer_tokens: int) -> tuple[float, int, int]:
    """(score, first token, last token) of the most likely span inside the context.

    The score is p(start) * p(end), each a softmax over this window's context tokens, as the
    transformers question-answering pipeline reports it.
    """
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


def _pad(features: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Windows padded to the longest one: (W, T) tensors."""
    longest = max(len(f["input_ids"]) for f in features)
    fill = {"input_ids": pad_id, "token_type_ids": 0, "attention_mask": 0}
    return {k: torch.tensor([f[k] + [fill[k]] * (longest - len(f[k])) for f in features]) for k in features[0]}


def _span_logits(out: Any) -> tuple[torch.Tensor, torch.Tensor]:
    start = getattr(out, "start_logits", None)
    if start is None:  # a runtime session answers with a tuple: (start_logits, end_logits)
        return out[0], out[1]
    return start, out.end_logits


# ----------------------------------------------------------------------------- capability

def _warm(model: Any) -> list[Windows]:
    return [windows(model.tokenizer, "What is this?", "This is a warm-up.", 64)]


def _tokens(item: Windows) -> int:
    return item.tokens


@capability("answer", accepts=lambda m: m.task == "question-answering", warmup=_warm, tokens=_tokens)
def answer_fn(model: Any, config: ServeConfig):
    pad_id = model.tokenizer.pad_token_id or 0

    @torch.inference_mode()
    def run(items: list[Windows]) -> list[dict[str, Any]]:
        flat = [(r, w) for r, item in enumerate(items) for w in range(len(item.offsets))]
        best: list[tuple[float, int, int, int]] = [(-2.0, 0, 0, 0)] * len(items)  # (score, window, i, j)
        for lo in range(0, len(flat), config.max_batch):  # one long context must not make one huge batch
            chunk = flat[lo:lo + config.max_batch]
            feats = [{k: items[r].features[k][w] for k in items[r].features} for r, w in chunk]
            batch = {k: v.to(model.device) for k, v in _pad(feats, pad_id).items()}
            starts, ends = _span_logits(model.runner(**batch))  # (W, T) each
            for (r, w), s, e in zip(chunk, starts.cpu(), ends.cpu()):
                score, i, j = best_span(s, e, items[r].in_context[w], items[r].max_answer_tokens)
                if score > best[r][0]:
                    best[r] = (score, w, i, j)
        out = []
        for item, (score, w, i, j) in zip(items, best):
            start, end = item.offsets[w][i][0], item.offsets[w][j][1]
            out.append({"answer": item.context[start:end], "score": max(score, 0.0), "start": start, "end": end})
        return out

    return run


@router.post("/v1/answer")
async def answer(request: Request) -> dict[str, Any]:
    """The answer span to a question in a context: {"model", "question", "context"} -> {answer, score, start, end}."""
    reg = request.app.state.registry
    req = await parse(request, AnswerRequest, reg.config.max_body_bytes)
    if req.context is None:
        from leanlm.serve.knowledge import answer as from_knowledge

        return await from_knowledge(request, req)
    served: ServedModel = reg.get(req.model, "answer")
    item = windows(served.tokenizer, req.question, req.context, token_limit(served.model, reg.config),
                   req.max_answer_tokens, max_windows=reg.config.max_texts)
    (result,) = await reg.dispatch(served, "answer", [item])
    return {"object": "answer", "model": served.name, **result, "windows": len(item.offsets),
            "usage": {"prompt_tokens": item.tokens, "total_tokens": item.tokens}}

