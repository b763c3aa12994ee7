"""llama.cpp as a peer runtime for decoders (optional extra: `make llamacpp`).

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


INSTALL = "make llamacpp (builds llama-cpp-python ~12 min on 2 cores, installs its dependencies)"
# llama.cpp file types by the names its `llama-quantize` tool uses (llama.h's LLAMA_FTYPE_MOSTLY_*)
FTYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
          "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}


def _llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as e:
        # `make llamacpp` installs it with --no-deps: a missing dependency (diskcache, jinja2, ...)
        # must be named as such, not reported as llama-cpp-python itself being absent
        missing = (e.name or "").split(".")[0]
        if not available():
            raise UnsupportedError(f"llama.cpp runtime needs llama-cpp-python: {INSTALL}") from None
        if missing and missing != "llama_cpp":
            raise UnsupportedError(f"llama-cpp-python is installed but its dependency {missing!r} is missing: "
                                   f"pip install {missing.replace('_', '-')}") from None
        raise UnsupportedError(f"llama-cpp-python is installed but does not import: {e}") from None
    except OSError as e:  # the bundled libllama.so failed to load (wrong CPU build, missing libgomp, ...)
        raise UnsupportedError(f"llama-cpp-python is installed but its native library does not load: {e}") from None
    return llama_cpp


def available() -> bool:
    """True if llama-cpp-python is installed (without importing it; see `unavailable_reason`)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def unavailable_reason() -> str | None:
    """None if llama-cpp-python imports, else the one-line reason (what is missing and how to fix it)."""
    try:
        _llama_cpp()
    except UnsupportedError as e:
        return str(e)
    return None


def quantize_gguf(src: str | os.PathLike, dst: str | os.PathLike, type: str, threads: int | None = None) -> Path:
    """Quantize a float GGUF with llama.cpp's own quantizer (what `llama-quantize src dst TYPE` does).

    Args:
        src: an F32/F16 GGUF file (e.g. from `leanlm.export.gguf.export_gguf(..., "f32")`).
        dst: output .gguf file.
        type: "q8_0", "q4_0", "q4_1" or "Q4_K_M" (llama.cpp's tensor mix for that file type).
        threads: quantizer threads (default: torch's thread count).

    Example:
        >>> quantize_gguf("model-f32.gguf", "model-Q4_K_M.gguf", "Q4_K_M")
    """
    import ctypes

    from leanlm.errors import did_you_mean

    if type not in FTYPES:
        raise UnsupportedError(did_you_mean(type, tuple(FTYPES), "llama.cpp file type"))
    llama_cpp = _llama_cpp()
    if not Path(src).exists():
        raise ArtifactError(f"GGUF file {src} not found")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[type])
    params.nthread = threads or torch.get_num_threads()
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise ArtifactError(f"llama.cpp could not quantize {src} to {type}")
    return Path(dst)


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
