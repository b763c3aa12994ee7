"""Text generation for causal-lm models: our own small decode loop, a fast path, speculation.

Example:
    >>> import leanlm
    >>> from leanlm.generate import GenerationConfig
    >>> lm = leanlm.load("smollm2-135m")
    >>> leanlm.generate(lm, "What is the capital of France?", GenerationConfig(chat=True, fast=True))
    >>> for chunk in leanlm.generate(lm, "Once upon a time", stream=True):
    ...     print(chunk, end="", flush=True)
"""
from __future__ import annotations

import sys
import types
from typing import Any, Iterator

from leanlm.generate.config import GenerationConfig
from leanlm.generate.loop import GenerationResult, Messages, check_config, run

__all__ = ["generate", "generate_stream", "generate_result", "GenerationConfig", "GenerationResult",
           "layer_dropped", "fast_decoder"]


def generate(model: Any, prompt: str | Messages, config: GenerationConfig | dict | None = None, *,
             stream: bool = False, draft: Any = None, **options: Any) -> str | Iterator[str]:
    """Generate a continuation of `prompt` (or a chat reply to a list of messages).

    Args:
        model: a causal-lm LeanModel (e.g. `leanlm.load("smollm2-135m")`) or a bundled name / path.
        prompt: text to continue, chat messages [{"role": "user", "content": ...}, ...]
            (messages, or chat=True, use the model's chat template), or prompt token ids.
        config: a GenerationConfig (or its fields as a dict); keyword options override fields,
            e.g. `generate(lm, "Hi", max_new_tokens=20, temperature=0.7, seed=1)`.
        stream: return an iterator of text chunks instead of the whole text.
        draft: a draft model (or decoder) for speculative decoding; same tokenizer as `model`.

    Returns the generated text (without the prompt, cut before any stop string), or an iterator
    of its chunks with stream=True.

    Raises ConfigError for invalid settings and LeanlmError for an empty or too-long prompt.

    Example:
        >>> leanlm.generate(lm, "The three primary colors are", max_new_tokens=24, stop=["\\n"])
    """
    if stream:
        return generate_stream(model, prompt, config, draft=draft, **options)
    return generate_result(model, prompt, config, draft=draft, **options).text


def generate_stream(model: Any, prompt: str | Messages, config: GenerationConfig | dict | None = None, *,
                    draft: Any = None, **options: Any) -> Iterator[str]:
    """Like `generate`, but yields text chunks as soon as they are safe to show.

    Example:
        >>> for chunk in generate_stream(lm, "Tell me a story", max_new_tokens=50):
        ...     print(chunk, end="")
    """
    model, cfg = _prepare(model, config, options)
    return run(model, prompt, cfg, draft=draft, stream=True)


def generate_result(model: Any, prompt: str | Messages, config: GenerationConfig | dict | None = None, *,
                    draft: Any = None, **options: Any) -> GenerationResult:
    """Like `generate`, but returns a GenerationResult: text, token ids, finish reason, timings
    (prefill_s, decode_s) and, with a draft, how many drafted tokens were accepted.

    Example:
        >>> r = generate_result(lm, "Hello", max_new_tokens=16)
        >>> r.finish_reason, r.decode_ms_per_token
    """
    model, cfg = _prepare(model, config, options)
    result = GenerationResult("", [], 0, "length")
    for _ in run(model, prompt, cfg, draft=draft, stream=False, result=result):
        pass  # non-streaming runs yield nothing; the result is filled in place
    return result


def _prepare(model: Any, config: Any, options: dict) -> tuple[Any, GenerationConfig]:
    cfg = check_config(config)
    if options:
        merged = {k: v for k, v in cfg.to_dict().items() if k != "type"}
        unknown = sorted(set(options) - set(merged))
        if unknown:
            from leanlm.errors import ConfigError

            raise ConfigError(f"unknown generation option(s) {unknown}; valid: {sorted(merged)}")
        merged.update(options)
        cfg = GenerationConfig.from_dict(merged)
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        from leanlm.models.loading import load

        model = load(model, task="causal-lm")
    return model, cfg


def __getattr__(name: str) -> Any:
    # heavier pieces load on first use
    if name == "layer_dropped":
        from leanlm.generate.speculative import layer_dropped

        return layer_dropped
    if name == "fast_decoder":
        from leanlm.generate.fast import fast_decoder

        return fast_decoder
    raise AttributeError(f"module 'leanlm.generate' has no attribute {name!r}")


class _CallableModule(types.ModuleType):
    """`leanlm.generate` is both this package and the verb: once the package is imported Python
    binds the module to that name, so calling the module calls `generate`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
