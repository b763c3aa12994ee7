"""Extractive question answering: POST /v1/answer {model, question, context} -> {answer, score, start, end}.

The handler tokenizes question + context on the event loop (so a bad request is a 400 before it
queues), splitting a context longer than the model's window into overlapping windows (document
stride, as in SQuAD fine-tuning); the batch function runs every window of every queued request in
forward passes of up to `max_batch` windows and keeps, per request, the best span over its windows:
start <= end, at most `max_answer_tokens` long, inside the context. `start`/`end` are character
offsets into the context, so `context[start:end] == answer`. The windowing and span decoding are
`leanlm.data.qa`'s, the same code `leanlm evaluate` scores a QA model with.

Example:
    >>> httpx.post(url + "/v1/answer", json={"question": "Who sat?", "context": "The cat sat on the mat."}).json()
    {'object': 'answer', 'model': 'qa', 'answer': 'The cat', 'score': 0.41, 'start': 0, 'end': 7, ...}
"""
from __future__ import annotations

from typing import Any, Optional

from fastapi import APIRouter, Request
from pydantic import Field, field_validator

from leanlm.data.qa import MAX_ANSWER_TOKENS, Windows, answer_windows, best_span  # noqa: F401 (re-exported)
from leanlm.data.qa import windows as _windows
from leanlm.errors import DataError, UnsupportedError
from leanlm.serve.config import ServeConfig
from leanlm.serve.encoders import token_limit
from leanlm.serve.registry import ServedModel, capability
from leanlm.serve.schemas import ApiError, _Request, parse

router = APIRouter()


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


def windows(tokenizer: Any, question: str, context: str, limit: int, max_answer_tokens: int = MAX_ANSWER_TOKENS,
            max_windows: int | None = None) -> Windows:
    """`leanlm.data.qa.windows` (stride: a quarter of the context room), any problem a 400 ApiError."""
    try:
        w = _windows(tokenizer, question, context, limit, max_answer_tokens)
    except UnsupportedError as e:
        raise ApiError(400, str(e), param="model", code="unsupported_model") from None
    except DataError as e:
        raise ApiError(400, str(e), param="question", code="context_length_exceeded") from None
    n = len(w.offsets)
    if max_windows is not None and n > max_windows:
        raise ApiError(400, f"the context splits into {n} windows of {limit} tokens; at most {max_windows} "
                       "per request", param="context", code="context_length_exceeded")
    return w


# ----------------------------------------------------------------------------- capability

def _warm(model: Any) -> list[Windows]:
    return [windows(model.tokenizer, "What is this?", "This is a warm-up.", 64)]


def _tokens(item: Windows) -> int:
    return item.tokens


@capability("answer", accepts=lambda m: m.task == "question-answering", warmup=_warm, tokens=_tokens)
def answer_fn(model: Any, config: ServeConfig):
    pad_id = model.tokenizer.pad_token_id or 0

    def run(items: list[Windows]) -> list[dict[str, Any]]:
        return answer_windows(model.runner, items, config.max_batch, pad_id, model.device)

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

