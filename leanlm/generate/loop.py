"""The decode loop: prompt -> tokens -> text, with stop strings, EOS and streaming.

One small loop serves every decoder: Hugging Face's model with a DynamicCache (eager), the same
model re-run on the whole sequence (no cache, a reference), and the fast decoder (static cache,
compiled step). A decoder only has to `reset`, `forward` (append tokens, return logits) and
`rollback`, which is also all speculative decoding needs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

from leanlm.errors import ConfigError, LeanlmError, UnsupportedError
from leanlm.generate.config import GenerationConfig
from leanlm.generate.sampling import Sampler

Messages = Sequence[dict]


@dataclass
class GenerationResult:
    """A finished generation: the text plus what it cost."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str  # "eos" | "stop" | "length"
    prefill_s: float = 0.0
    decode_s: float = 0.0
    # speculative decoding: draft tokens proposed and accepted by the target
    drafted: int = 0
    accepted: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def decode_ms_per_token(self) -> float:
        # the first token comes out of prefill; the rest cost one decode step each
        n = max(1, self.new_tokens - 1)
        return self.decode_s / n * 1e3

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


# --------------------------------------------------------------------------- decoders

class EagerDecoder:
    """The Hugging Face module itself with a DynamicCache (the reference our fast path matches)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.device = next(module.parameters()).device
        self.max_length = int(getattr(module.config, "max_position_embeddings", 2048))
        self.pos = 0
        self.cache: Any = None

    def reset(self, capacity: int) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.module.config)
        self.pos = 0

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, all_logits: bool = False) -> torch.Tensor:
        out = self.module(input_ids=ids[None].to(self.device), past_key_values=self.cache, use_cache=True,
                          logits_to_keep=0 if all_logits else 1)
        self.pos += int(ids.shape[0])
        logits = out.logits[0].float()
        return logits if all_logits else logits[-1]

    def rollback(self, length: int) -> None:
        if length < self.pos:
            self.cache.crop(length - self.pos)  # transformers 5: a negative count removes tokens
            self.pos = length


class NoCacheDecoder:
    """Re-runs the whole sequence every step: slow, but the plainest possible reference."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.device = next(module.parameters()).device
        self.max_length = int(getattr(module.config, "max_position_embeddings", 2048))
        self.ids = torch.zeros(0, dtype=torch.long)

    @property
    def pos(self) -> int:
        return int(self.ids.shape[0])

    def reset(self, capacity: int) -> None:
        self.ids = torch.zeros(0, dtype=torch.long)

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, all_logits: bool = False) -> torch.Tensor:
        self.ids = torch.cat([self.ids, ids.cpu()])
        out = self.module(input_ids=self.ids[None].to(self.device), use_cache=False)
        logits = out.logits[0, -ids.shape[0]:].float()
        return logits if all_logits else logits[-1]

    def rollback(self, length: int) -> None:
        self.ids = self.ids[:length]


def make_decoder(model: Any, config: GenerationConfig) -> Any:
    """The decoder `config` asks for (eager, no-cache or fast) for a causal-lm LeanModel.

    A runtime that brings its own stateful decoder (OpenVINO: `runner.decoder()`) supplies it;
    the torch-only settings (fast, compile, dtype, weights) do not apply there.
    """
    check_causal_lm(model)
    if _runtime_decoder(model):
        dec = model.runner.decoder()
        if getattr(dec, "model", None) is None:
            dec.model = model
        return dec
    if not config.use_cache:
        return NoCacheDecoder(model.module)
    if config.fast:
        from leanlm.generate.fast import fast_decoder

        return fast_decoder(model, dtype=config.dtype, weights=config.weights, compile=config.compile,
                            scope=config.compile_scope)
    return EagerDecoder(model.module)


def check_causal_lm(model: Any) -> None:
    if getattr(model, "task", None) != "causal-lm":
        raise UnsupportedError(f"generate needs a causal-lm model; this one is {getattr(model, 'task', type(model).__name__)}")
    if _runtime_decoder(model):
        return
    if model.backend != "torch" or not isinstance(model.module, torch.nn.Module):
        raise UnsupportedError(f"generate runs PyTorch models; this one runs on {model.backend}")


def _runtime_decoder(model: Any) -> bool:
    return model.backend != "torch" and callable(getattr(model.runner, "decoder", None))


def model_config(model: Any) -> Any:
    """The HF config of a causal LM, whether PyTorch holds it or a runtime's runner does."""
    return getattr(model.module, "config", None) or getattr(model.runner, "config", None)


# --------------------------------------------------------------------------- prompts

def prompt_ids(model: Any, prompt: str | Messages, config: GenerationConfig) -> torch.Tensor:
    """Token ids (T,) of a prompt string, chat messages or token ids, checked against the context window."""
    tok = model.tokenizer
    if isinstance(prompt, torch.Tensor) or (isinstance(prompt, (list, tuple)) and prompt
                                            and all(isinstance(t, int) for t in prompt)):
        ids = torch.as_tensor(prompt, dtype=torch.long).reshape(-1).cpu()
        return _check_length(model, ids)
    if isinstance(prompt, str):
        if not prompt.strip():
            raise LeanlmError("the prompt is empty; give some text to continue")
        if config.chat:
            from leanlm.generate.chat import chat_prompt

            prompt = chat_prompt(tok, [{"role": "user", "content": prompt}], config.system)
    elif isinstance(prompt, (list, tuple)):
        from leanlm.generate.chat import chat_prompt

        prompt = chat_prompt(tok, prompt, config.system)
    else:
        raise LeanlmError(f"prompt must be a string or a list of chat messages, got {type(prompt).__name__}")
    ids = tok(prompt, add_special_tokens=not _has_template_tokens(tok, prompt), return_tensors="pt").input_ids[0]
    return _check_length(model, ids)


def _check_length(model: Any, ids: torch.Tensor) -> torch.Tensor:
    if ids.numel() == 0:
        raise LeanlmError("the prompt encodes to no tokens; give some text to continue")
    vocab = getattr(model_config(model), "vocab_size", None)
    if vocab and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise LeanlmError(f"prompt token ids must be in [0, {vocab})")
    context = context_window(model)
    if ids.numel() >= context:
        raise LeanlmError(f"the prompt is {ids.numel()} tokens but the model's context window is {context}; "
                          "shorten the prompt")
    return ids


def _has_template_tokens(tok: Any, text: str) -> bool:
    # a rendered chat template already carries its special tokens; don't add BOS twice
    return bool(tok.bos_token and text.startswith(tok.bos_token)) or text.startswith("<|im_start|>")


def context_window(model: Any) -> int:
    return int(getattr(model_config(model), "max_position_embeddings", None) or 2048)


def eos_ids(model: Any) -> set[int]:
    ids: set[int] = set()
    holder = model.module if model.module is not None else model.runner
    for src in (getattr(holder, "generation_config", None), model_config(model), model.tokenizer):
        value = getattr(src, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


# --------------------------------------------------------------------------- text and stops

class TextTracker:
    """Turns the growing token list into text chunks that are safe to show.

    Holds back an incomplete UTF-8 character and any tail that might be the start of a stop
    string; cuts the text before the first stop string.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str], need_text: bool):
        self.tok = tokenizer
        self.stop = tuple(stop)
        self.need_text = need_text or bool(stop)
        self.ids: list[int] = []
        self.emitted = 0
        self.text = ""
        self.stopped = False

    def push(self, token: int) -> str:
        """Add a token; returns the new text that can be shown (may be empty)."""
        self.ids.append(token)
        if not self.need_text:
            return ""
        self.text = self.tok.decode(self.ids, skip_special_tokens=True)
        if self.stop:
            start = max(0, self.emitted - max(len(s) for s in self.stop))
            hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                self.stopped = True
                self.text = self.text[: min(hits)]
                return self._emit(len(self.text))
        safe = len(self.text)
        while safe > self.emitted and self.text[safe - 1] == "\ufffd":
            safe -= 1
        for s in self.stop:
            for n in range(min(len(s) - 1, safe - self.emitted), 0, -1):
                if self.text[safe - n : safe] == s[:n]:
                    safe -= n
                    break
        return self._emit(safe)

    def finish(self) -> str:
        if not self.need_text:
            self.text = self.tok.decode(self.ids, skip_special_tokens=True)
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        if upto <= self.emitted:
            return ""
        chunk = self.text[self.emitted : upto]
        self.emitted = upto
        return chunk


# --------------------------------------------------------------------------- the loop

def run(model: Any, prompt: str | Messages, config: GenerationConfig, draft: Any = None,
        stream: bool = False, result: GenerationResult | None = None, decoder: Any = None) -> Iterator[str]:
    """Generate, returning an iterator of text chunks; fills `result` (if given) as it goes.

    Prompt and settings are checked here, before the first chunk is asked for, so errors
    surface at the call. Tokens come from `decode_tokens` or, with a draft, `speculative_tokens`.
    `decoder`: a ready decoder for `model` (default: the one `config` asks for).
    """
    ids = prompt_ids(model, prompt, config)
    context = context_window(model)
    max_new = min(config.max_new_tokens, context - int(ids.numel()))
    decoder = decoder if decoder is not None else make_decoder(model, config)
    if draft is not None:
        from leanlm.generate.speculative import draft_decoder, speculative_tokens

        draft = draft_decoder(draft, config, decoder)
    res = result if result is not None else GenerationResult("", [], int(ids.numel()), "length")
    res.prompt_tokens = int(ids.numel())
    return _chunks(model, decoder, draft, ids, max_new, config, stream, res)


def _chunks(model: Any, decoder: Any, draft: Any, ids: torch.Tensor, max_new: int, config: GenerationConfig,
            stream: bool, res: GenerationResult) -> Iterator[str]:
    decoder.reset(int(ids.numel()) + max_new)
    eos = eos_ids(model) if config.stop_on_eos else set()
    tracker = TextTracker(model.tokenizer, config.stop, need_text=stream)
    if draft is not None:
        from leanlm.generate.speculative import speculative_tokens

        tokens = speculative_tokens(decoder, draft, ids, max_new, config, res)
    else:
        tokens = decode_tokens(decoder, ids, max_new, config, res)
    res.finish_reason = "length"
    try:
        for token in tokens:
            if token in eos:
                res.finish_reason = "eos"
                break
            chunk = tracker.push(token)
            if chunk and stream:
                yield chunk
            if tracker.stopped:
                res.finish_reason = "stop"
                break
    finally:
        tokens.close()  # stop the producer (and its timers) right here
    tail = tracker.finish()
    res.token_ids = list(tracker.ids)
    res.text = tracker.text
    if tail and stream:
        yield tail


def decode_tokens(decoder: Any, ids: torch.Tensor, max_new: int, config: GenerationConfig,
                  res: GenerationResult) -> Iterator[int]:
    """Plain autoregressive decoding: prefill the prompt, then one token per forward."""
    sampler = Sampler(config, device="cpu")
    context = _Context(ids, max_new) if config.repetition_penalty != 1.0 else None
    t0 = time.perf_counter()
    logits = decoder.forward(ids)
    token = sampler.pick(logits.cpu(), context.view() if context else None)
    res.prefill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    step = torch.zeros(1, dtype=torch.long)
    for i in range(max_new):
        yield token
        if i == max_new - 1:
            break
        if context:
            context.append(token)
        step[0] = token
        logits = decoder.forward(step)
        token = sampler.pick(logits.cpu(), context.view() if context else None)
        # decode time = start of decoding until the latest token was picked
        res.decode_s = time.perf_counter() - t0


class _Context:
    """Prompt + generated ids in one pre-allocated tensor (for the repetition penalty)."""

    def __init__(self, ids: torch.Tensor, extra: int):
        self.buf = torch.empty(int(ids.numel()) + extra + 1, dtype=torch.long)
        self.buf[: ids.numel()] = ids.cpu()
        self.n = int(ids.numel())

    def append(self, token: int) -> None:
        self.buf[self.n] = token
        self.n += 1

    def extend(self, tokens: Sequence[int]) -> None:
        for t in tokens:
            self.append(t)

    def view(self) -> torch.Tensor:
        return self.buf[: self.n]


def check_config(config: Any) -> GenerationConfig:
    if config is None:
        return GenerationConfig()
    if isinstance(config, dict):
        return GenerationConfig.from_dict(config)
    if not isinstance(config, GenerationConfig):
        raise ConfigError(f"config must be a GenerationConfig, got {type(config).__name__}")
    return config
