"""Wire formats: request bodies (pydantic, strict), the OpenAI error shape, and body parsing.

Bodies are read and parsed here rather than by FastAPI's automatic validation, so every bad
input (an oversized body, malformed JSON, a wrong type, an empty string) gets the same OpenAI
error shape, `{"error": {"message", "type", "param", "code"}}`, with a one-line message.
"""
from __future__ import annotations

import json
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ApiError(Exception):
    """An HTTP error with an OpenAI-shaped JSON body.

    Args:
        status: HTTP status (400, 401, 404, 413, 429, 500, 503, 504).
        message: one line saying what was wrong and how to fix it.
        type: OpenAI error type ("invalid_request_error", "authentication_error", "server_error", ...).
        param: the request field at fault, if any.
        code: a short machine-readable code ("model_not_found", "context_length_exceeded", ...).
        headers: extra response headers (e.g. Retry-After on 429).
    """

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# ----------------------------------------------------------------------------- requests

class _Request(BaseModel):
    # strict: "3" is not an integer and 1 is not a string; unknown fields are ignored, as the
    # OpenAI server does for options it does not know
    model_config = ConfigDict(strict=True, extra="ignore")

    model: Optional[str] = None


def _nonempty(value: Any, what: str) -> Any:
    texts = [value] if isinstance(value, str) else value
    if isinstance(texts, list):
        if not texts:
            raise ValueError(f"{what} must not be an empty list")
        for t in texts:
            if isinstance(t, str) and not t.strip():
                raise ValueError(f"{what} must not contain empty strings")
    return value


class TextsRequest(_Request):
    """Texts for an encoder: one string or a list of strings."""

    input: Union[str, list[str]]

    @field_validator("input")
    @classmethod
    def _check(cls, v: Any) -> Any:
        return _nonempty(v, "input")

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class ClassifyRequest(TextsRequest):
    """POST /v1/classify: {"model", "input"} -> labels and probabilities."""


class EmbeddingRequest(TextsRequest):
    """POST /v1/embeddings (OpenAI): {"model", "input", "encoding_format"}."""

    encoding_format: Literal["float", "base64"] = "float"
    user: Optional[str] = None


class _Sampling(_Request):
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=1)  # one choice per request: the decode loop is batch 1
    stream: bool = False
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = Field(None, ge=0)
    user: Optional[str] = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: Any) -> Any:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop strings")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return v

    @property
    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class CompletionRequest(_Sampling):
    """POST /v1/completions (OpenAI): {"model", "prompt", "max_tokens", "temperature", "stream", ...}."""

    prompt: Union[str, list[str]]
    max_tokens: Optional[int] = Field(16, ge=1)  # OpenAI's default for completions

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: Any) -> Any:
        _nonempty(v, "prompt")
        if isinstance(v, list) and len(v) != 1:
            raise ValueError("give one prompt per request")
        return v

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class ContentPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "user", "assistant", "tool"]
    content: Union[str, list[ContentPart]]

    def plain(self) -> dict[str, str]:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": self.role, "content": text}


class ChatRequest(_Sampling):
    """POST /v1/chat/completions (OpenAI): {"model", "messages", "max_tokens", "stream", ...}."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)

    @field_validator("messages")
    @classmethod
    def _content(cls, v: list[ChatMessage]) -> list[ChatMessage]:
        if not any(m.plain()["content"].strip() for m in v if m.role != "system"):
            raise ValueError("the messages hold no text")
        return v


# ----------------------------------------------------------------------------- parsing

async def read_body(request: Any, limit: int) -> bytes:
    """The request body, refusing (413) more than `limit` bytes, declared or streamed."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # chunked uploads declare nothing: count as we read
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body is larger than {limit} bytes (the server's --max-body-bytes)",
                    code="request_too_large")


async def parse(request: Any, schema: type[BaseModel], limit: int) -> Any:
    """Read, decode and validate a JSON body into `schema`; any problem is a 4xx ApiError."""
    raw = await read_body(request, limit)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(data).__name__}", code="invalid_json")
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if not _is_union_branch(p))
        msg = first["msg"].removeprefix("Value error, ")
        raise ApiError(400, f"{where}: {msg}" if where else msg, param=where or None, code="invalid_value") from None


def _is_union_branch(part: Any) -> bool:
    # pydantic names the union member it tried ("str", "list[str]") inside the location
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part)
