"""Encoder endpoints: POST /v1/classify and POST /v1/embeddings (OpenAI shape), dynamically batched.

An item is `(text, n_tokens)`: the handler counts tokens to refuse over-long inputs before they
queue. The batch function sorts a gathered batch by length and splits it where one more forward
call costs less than the padding it saves (`leanlm.serve.buckets`), padding each part to its own
longest text; a backend compiled for static shapes gets the whole batch at one fitting shape.
"""
from __future__ import annotations

import base64
from typing import Any, Callable, Sequence

import numpy as np
import torch
from fastapi import APIRouter, Request

from leanlm.serve.buckets import partition
from leanlm.serve.config import ServeConfig
from leanlm.serve.registry import ServedModel, capability
from leanlm.serve.schemas import ApiError, ClassifyRequest, EmbeddingRequest, parse

router = APIRouter()

Item = tuple[str, int]  # (text, tokens)


def token_limit(model: Any, config: ServeConfig) -> int:
    return min(config.max_tokens, model.max_length)


def encoder_items(served: ServedModel, texts: list[str], config: ServeConfig) -> list[Item]:
    """Check count and length of a request's texts; 400 with the offending index otherwise."""
    if len(texts) > config.max_texts:
        raise ApiError(400, f"input holds {len(texts)} texts; at most {config.max_texts} per request",
                       param="input", code="too_many_inputs")
    limit = token_limit(served.model, config)
    lengths = [len(ids) for ids in served.tokenizer(texts, add_special_tokens=True)["input_ids"]]
    for i, n in enumerate(lengths):
        if n > limit:
            raise ApiError(400, f"input[{i}] is {n} tokens; this model takes at most {limit}",
                           param=f"input.{i}", code="context_length_exceeded")
    return list(zip(texts, lengths))


def encode(model: Any, items: Sequence[Item], limit: int) -> dict[str, torch.Tensor]:
    """One padded batch: to the longest text, or to a static (batch, seq) shape the runner compiled."""
    longest = max(n for _, n in items)
    static = sorted(s for b, s in getattr(model.runner, "shapes", ()) if b == len(items) and s >= longest)
    texts = [t for t, _ in items]
    if static:
        return model.encode(texts, max_length=static[0], padding="max_length")
    return model.encode(texts, max_length=limit)


def split_run(model: Any, items: Sequence[Item], config: ServeConfig, fn: Callable[[list[Item]], list]) -> list:
    """`fn` over length-sorted sub-batches of `items`; results back in the items' order."""
    if config.split_cost_tokens == 0 or getattr(model.runner, "shapes", None) or len(items) < 2:
        return list(fn(list(items)))
    out: list[Any] = [None] * len(items)
    for group in partition([n for _, n in items], config.split_cost_tokens):
        for i, result in zip(group, fn([items[i] for i in group])):
            out[i] = result
    return out


# ----------------------------------------------------------------------------- classify

def _warm(model: Any) -> list[Item]:
    return [("warm up", 4)]


def _tokens(item: Item) -> int:
    return item[1]


@capability("classify", accepts=lambda m: m.task == "sequence-classification", warmup=_warm, tokens=_tokens)
def classify_fn(model: Any, config: ServeConfig):
    limit = token_limit(model, config)
    labels = list(model.labels or [])

    def probabilities(items: list[Item]) -> list[list[float]]:
        return torch.softmax(model(**encode(model, items, limit)).float(), dim=-1).cpu().tolist()  # (B, C)

    def run(items: list[Item]) -> list[dict[str, Any]]:
        rows = split_run(model, items, config, probabilities)
        names = labels if len(labels) == len(rows[0]) else [str(i) for i in range(len(rows[0]))]
        out = []
        for row in rows:
            best = max(range(len(row)), key=row.__getitem__)
            out.append({"label": names[best], "score": row[best],
                        "probabilities": dict(zip(names, row))})
        return out

    return run


async def run_texts(request: Request, schema: type, capability: str) -> tuple[Any, ServedModel, list, dict]:
    """Parse a texts request, check it, run it through the model's batcher: (request, model, results, usage)."""
    reg = request.app.state.registry
    req = await parse(request, schema, reg.config.max_body_bytes)
    served = reg.get(req.model, capability)
    items = encoder_items(served, req.texts, reg.config)
    results = await reg.dispatch(served, capability, items)
    tokens = sum(n for _, n in items)
    return req, served, results, {"prompt_tokens": tokens, "total_tokens": tokens}


@router.post("/v1/classify")
async def classify(request: Request) -> dict[str, Any]:
    """Labels and class probabilities for one text or a list: {"model", "input"}."""
    _, served, results, usage = await run_texts(request, ClassifyRequest, "classify")
    return {"object": "list", "model": served.name,
            "data": [{"object": "classification", "index": i, **r} for i, r in enumerate(results)], "usage": usage}


# ----------------------------------------------------------------------------- embeddings

def _embeds(model: Any) -> bool:
    # a classifier still embeds through its encoder body, which only the torch module exposes
    return model.task == "feature-extraction" or (model.task == "sequence-classification" and model.backend == "torch")


@capability("embed", accepts=_embeds, warmup=_warm, tokens=_tokens)
def embed_fn(model: Any, config: ServeConfig):
    from leanlm.models.embed import embed

    limit = token_limit(model, config)

    def vectors(items: list[Item]) -> list[np.ndarray]:
        return list(embed(model, [t for t, _ in items], batch_size=len(items), max_length=limit))

    def run(items: list[Item]) -> list[np.ndarray]:
        return split_run(model, items, config, vectors)

    return run


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> dict[str, Any]:
    """Sentence embeddings (mean pooling, L2-normalised), OpenAI's request and response shape."""
    req, served, vectors, usage = await run_texts(request, EmbeddingRequest, "embed")
    return {"object": "list", "model": served.name,
            "data": [{"object": "embedding", "index": i, "embedding": _format(v, req.encoding_format)}
                     for i, v in enumerate(vectors)], "usage": usage}


def _format(vector: np.ndarray, encoding: str) -> Any:
    if encoding == "base64":  # what the openai client asks for by default: little-endian float32
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]
