"""`GenerationConfig`: every knob of text generation in one frozen, validated dataclass."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from leanlm.config import BaseConfig, check

DTYPES = ("auto", "float32", "bfloat16", "float16")
WEIGHTS = ("auto", "int8", "int4")
SCOPES = ("layer", "model")


@dataclass(frozen=True)
class GenerationConfig(BaseConfig):
    """How to generate text from a causal-lm model.

    Args:
        max_new_tokens: stop after this many generated tokens.
        temperature: 0 = greedy (deterministic); > 0 samples from softmax(logits / temperature).
        top_k: keep only the k most likely tokens when sampling (0 = off).
        top_p: keep the smallest set of tokens whose probability reaches top_p (1.0 = off).
        repetition_penalty: > 1 discourages tokens already in the prompt or output (1.0 = off;
            same rule as Hugging Face: positive logits are divided, negative ones multiplied).
        seed: seed for sampling (None = nondeterministic).
        stop: strings that end generation; the returned text stops before the first one.
        stop_on_eos: stop at the tokenizer's end-of-sequence token (False: always produce
            max_new_tokens, as benchmarks do).
        chat: wrap a plain prompt in the model's chat template as one user message (a list of
            messages always uses the template).
        system: optional system message prepended when the chat template is used.
        fast: use the fast decoder (static KV cache, fused weights, compiled decode step).
        compile: with fast=True, compile the decode step with torch.compile (paid once per
            model and cache size); False runs the same fast decoder eagerly.
        compile_scope: what one compiled graph covers: "layer" (one decoder layer reused by
            every layer; compiles in seconds) or "model" (the whole forward; about a minute to
            compile on 2 cores, and measurably less overhead per decoded token).
        dtype: compute dtype of the fast decoder: "auto" (the model's own, bf16 on CUDA),
            "float32", "bfloat16" or "float16".
        weights: fast decoder weight format: "auto" (as the model holds them, e.g. after
            `leanlm.quantize_`), "int8" or "int4" (pack float weights for PyTorch's weight-only
            CPU kernels on the fly; the output head stays int8).
        use_cache: keep a KV cache (False recomputes the whole sequence each step; a reference).
        draft_tokens: tokens a draft model proposes per step in speculative decoding.

    Example:
        >>> cfg = GenerationConfig(max_new_tokens=32, temperature=0.7, top_p=0.9, seed=0)
        >>> leanlm.generate(model, "The capital of France is", cfg)
    """

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_on_eos: bool = True
    chat: bool = False
    system: str | None = None
    fast: bool = False
    compile: bool = True
    compile_scope: str = "layer"
    dtype: str = "auto"
    weights: str = "auto"
    use_cache: bool = True
    draft_tokens: int = 4

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):  # a single stop string is a common shorthand
            object.__setattr__(self, "stop", (self.stop,))
        super().__post_init__()

    def validate(self) -> None:
        check(isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1,
              f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        check(_num(self.temperature) and self.temperature >= 0,
              f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        check(isinstance(self.top_k, int) and self.top_k >= 0, f"top_k must be an integer >= 0, got {self.top_k!r}")
        check(_num(self.top_p) and 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p!r}")
        check(_num(self.repetition_penalty) and self.repetition_penalty > 0,
              f"repetition_penalty must be > 0 (1.0 = off), got {self.repetition_penalty!r}")
        check(self.seed is None or (isinstance(self.seed, int) and self.seed >= 0),
              f"seed must be a non-negative integer or None, got {self.seed!r}")
        check(all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings")
        check(self.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        check(self.compile_scope in SCOPES,
              f"compile_scope must be one of {', '.join(SCOPES)}, got {self.compile_scope!r}")
        check(self.weights in WEIGHTS, f"weights must be one of {', '.join(WEIGHTS)}, got {self.weights!r}")
        check(self.weights == "auto" or self.fast, "weights='int8'/'int4' needs fast=True")
        check(isinstance(self.draft_tokens, int) and 1 <= self.draft_tokens <= 16,
              f"draft_tokens must be an integer in [1, 16], got {self.draft_tokens!r}")
        check(self.use_cache or not self.fast, "fast=True needs use_cache=True")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def replace(self, **changes: Any) -> "GenerationConfig":
        return replace(self, **changes)


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x  # rejects NaN
