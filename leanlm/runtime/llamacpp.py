"""llama.cpp as a peer runtime for decoders (optional extra: `pip install llama-cpp-python`).

A thin wrapper over llama-cpp-python's low-level `eval` loop, so prefill and per-token decode are
timed the same way as our own decoders (greedy argmax on the returned logits), and so its
next-token distributions can be compared with ours (KL divergence) on the same tokens.

Example:
    >>> from leanlm.runtime.llamacpp import LlamaCpp
    >>> llm = LlamaCpp("smollm2-q8_0.gguf", threads=2)
    >>> tokens, prefill_s, decode_s = llm.greedy(llm.tokenize("Once upon a time"), 32)
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from leanlm.errors import ArtifactError, UnsupportedError


def _llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise UnsupportedError("llama.cpp runtime needs llama-cpp-python: pip install llama-cpp-python "
                               "(compiles llama.cpp; ~12 minutes on 2 cores)") from None
    return llama_cpp


def available() -> bool:
    """True if llama-cpp-python is installed (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


class LlamaCpp:
    """A GGUF model loaded in llama.cpp.

    Args:
        path: the .gguf file.
        n_ctx: context size to allocate.
        threads: CPU threads (default: torch's thread count, so runs compare like for like).
        logits_all: keep logits for every position (needed by `logits`, costs memory).
    """

    def __init__(self, path: str | os.PathLike, n_ctx: int = 2048, threads: int | None = None,
                 logits_all: bool = False):
        llama_cpp = _llama_cpp()
        path = Path(path)
        if not path.exists():
            raise ArtifactError(f"GGUF file {path} not found")
        threads = threads or torch.get_num_threads()
        self.path = path
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                                   n_batch=min(n_ctx, 2048), n_ubatch=min(n_ctx, 2048), logits_all=logits_all,
                                   verbose=False)
        self.n_ctx = n_ctx
        self.logits_all = logits_all  # llama-cpp-python keeps it on Llama, not in its context params

    def tokenize(self, text: str) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.llm.detokenize(list(ids)).decode("utf-8", errors="replace")

    def _last_logits(self) -> np.ndarray:
        return self.llm.scores[self.llm.n_tokens - 1]

    def greedy(self, ids: Sequence[int], max_new_tokens: int) -> tuple[list[int], float, float]:
        """Greedy-decode `max_new_tokens` after `ids` (EOS ignored).

        Returns (new token ids, prefill seconds incl. the first token, decode seconds for the rest).
        """
        llm = self.llm
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(list(ids))
        token = int(np.argmax(self._last_logits()))
        prefill = time.perf_counter() - t0
        out = [token]
        t0 = time.perf_counter()
        for _ in range(max_new_tokens - 1):
            llm.eval([token])
            token = int(np.argmax(self._last_logits()))
            out.append(token)
        return out, prefill, time.perf_counter() - t0

    def logits(self, ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Logits (T, V) for every position of `ids` in a fresh context (needs logits_all=True)."""
        if not self.logits_all:
            raise UnsupportedError("LlamaCpp.logits needs logits_all=True")
        ids = [int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
        self.llm.reset()
        self.llm.eval(ids)
        return torch.from_numpy(np.array(self.llm.scores[: len(ids)], dtype=np.float32))
