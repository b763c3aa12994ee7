"""Decoder endpoints: POST /v1/completions and /v1/chat/completions (OpenAI shapes, SSE streaming).

The prompt is tokenized and checked on the event loop (so a bad prompt is a 400 before anything
queues or a stream starts); generation runs on the model's worker thread through `leanlm.generate`,
one request per call (the decode loop is batch 1), behind the same bounded queue as the encoders.
Streamed chunks cross from the worker thread to the response through an asyncio queue; a client
that disconnects stops its generation at the next token.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from leanlm.errors import LeanlmError
from leanlm.generate import GenerationConfig
from leanlm.generate.loop import GenerationResult, context_window, prompt_ids, run
from leanlm.serve.config import ServeConfig
from leanlm.serve.registry import ServedModel, capability, model_failed, shedding
from leanlm.serve.schemas import ApiError, ChatRequest, CompletionRequest, error_body, parse

router = APIRouter()

FINISH = {"eos": "stop", "stop": "stop", "length": "length"}  # ours -> OpenAI's finish_reason
_DONE = object()


@dataclass
class Job:
    """One generation: prompt token ids, settings, and where streamed chunks go (None: not streamed)."""

    ids: list[int]
    config: GenerationConfig
    sink: Callable[[str], None] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)


def _generates(model: Any) -> bool:
    return model.task == "causal-lm" and model.backend == "torch"


def _warm(model: Any) -> list[Job]:
    ids = model.tokenizer("Hello", return_tensors="pt").input_ids[0].tolist()
    return [Job(ids, GenerationConfig(max_new_tokens=1, stop_on_eos=False))]


@capability("generate", accepts=_generates, batched=False, warmup=_warm)
def generate_fn(model: Any, config: ServeConfig):
    def one(job: Job) -> GenerationResult:
        result = GenerationResult("", [], len(job.ids), "length")
        for chunk in run(model, job.ids, job.config, stream=True, result=result):
            if job.cancelled.is_set():
                break
            if job.sink is not None:
                job.sink(chunk)
        return result

    return lambda jobs: [one(j) for j in jobs]


class _Tokenizing:
    """The model as `prompt_ids` sees it, with the event loop's own tokenizer copy."""

    def __init__(self, served: ServedModel):
        self._model, self.tokenizer = served.model, served.tokenizer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def make_job(served: ServedModel, prompt: Any, req: Any, max_tokens: int | None, config: ServeConfig) -> Job:
    """Check the request's limits and tokenize its prompt; any problem is a 400."""
    if max_tokens is not None and max_tokens > config.max_new_tokens:
        raise ApiError(400, f"max_tokens is {max_tokens}; this server generates at most {config.max_new_tokens}",
                       param="max_tokens", code="invalid_value")
    try:
        gen = GenerationConfig(max_new_tokens=max_tokens or config.max_new_tokens, temperature=float(req.temperature),
                               top_p=float(req.top_p), seed=req.seed, stop=req.stops)
        ids = prompt_ids(_Tokenizing(served), prompt, gen)
    except LeanlmError as e:
        where = "messages" if isinstance(prompt, list) else "prompt"
        raise ApiError(400, str(e).splitlines()[0], param=where) from None
    limit = min(config.max_tokens, context_window(served.model) - 1)
    if ids.numel() > limit:
        raise ApiError(400, f"the prompt is {ids.numel()} tokens; this server takes at most {limit}",
                       param="prompt", code="context_length_exceeded")
    return Job(ids.tolist(), gen)


def _usage(result: GenerationResult) -> dict[str, int]:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.new_tokens,
            "total_tokens": result.prompt_tokens + result.new_tokens}


@router.post("/v1/completions")
async def completions(request: Request) -> Any:
    """Continue a prompt (OpenAI completions); `"stream": true` answers with server-sent events."""
    reg = request.app.state.registry
    req = await parse(request, CompletionRequest, reg.config.max_body_bytes)
    served = reg.get(req.model, "generate")
    job = make_job(served, req.text, req, req.max_tokens, reg.config)
    head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
            "model": served.name}

    def choice(text: str, finish: str | None) -> dict[str, Any]:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

    if req.stream:
        return _stream(reg, served, job, lambda text, finish: {**head, "choices": [choice(text, finish)]})
    result = await _complete(reg, served, job)
    return {**head, "choices": [choice(result.text, FINISH[result.finish_reason])], "usage": _usage(result)}


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Any:
    """Reply to chat messages with the model's chat template (OpenAI chat completions, SSE with stream)."""
    reg = request.app.state.registry
    req = await parse(request, ChatRequest, reg.config.max_body_bytes)
    served = reg.get(req.model, "generate")
    job = make_job(served, [m.plain() for m in req.messages], req, req.max_completion_tokens or req.max_tokens,
                   reg.config)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": served.name}
    if req.stream:
        def chunk(text: str, finish: str | None) -> dict[str, Any]:
            delta = {"content": text} if finish is None else {}
            return {**head, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        first = {**head, "object": "chat.completion.chunk",
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None}]}
        return _stream(reg, served, job, chunk, first=first)
    result = await _complete(reg, served, job)
    message = {"role": "assistant", "content": result.text}
    return {**head, "choices": [{"index": 0, "message": message, "logprobs": None,
                                 "finish_reason": FINISH[result.finish_reason]}], "usage": _usage(result)}


async def _complete(reg: Any, served: ServedModel, job: Job) -> GenerationResult:
    try:
        (result,) = await reg.dispatch(served, "generate", [job])
        return result
    finally:  # on a timeout nobody waits for the text any more: stop generating it
        job.cancelled.set()


# ----------------------------------------------------------------------------- streaming

def _sse(data: Any) -> str:
    return f"data: {json.dumps(data)}\n\n"


def _stream(reg: Any, served: ServedModel, job: Job, chunk: Callable[[str, str | None], dict],
            first: dict | None = None) -> StreamingResponse:
    """Queue the job now (so a full queue is still a plain 429), then stream its chunks as SSE."""
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue = asyncio.Queue()
    job.sink = lambda text: loop.call_soon_threadsafe(chunks.put_nowait, text)
    with shedding():
        future = served.batcher("generate").enqueue([job])
    # runs on the loop after the worker's last call_soon_threadsafe, so it always comes last
    future.add_done_callback(lambda _: chunks.put_nowait(_DONE))

    async def events() -> AsyncIterator[str]:
        try:
            if first is not None:
                yield _sse(first)
            while True:
                item = await asyncio.wait_for(chunks.get(), reg.config.timeout_s)
                if item is _DONE:
                    break
                yield _sse(chunk(item, None))
            error = future.exception() if not future.cancelled() else None
            if error is not None:  # the status line is sent already: report in-band, as OpenAI does
                failed = model_failed(served, error)
                yield _sse(error_body(failed.message, failed.type, None, failed.code))
            else:
                (result,) = future.result()
                yield _sse({**chunk("", FINISH[result.finish_reason]), "usage": _usage(result)})
            yield "data: [DONE]\n\n"
        except asyncio.TimeoutError:
            yield _sse(error_body(f"no output for {reg.config.timeout_s:g} s", "server_error", None, "timeout"))
        finally:  # client gone or stream over: stop generating, drop the job if it never started
            job.cancelled.set()
            if not future.done():
                future.cancel()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
