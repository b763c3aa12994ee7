"""The peer path: `openvino_genai.LLMPipeline` on the very IR our OpenVINO decoder runs.

GenAI brings its own C++ generation loop, sampler and tokenizer (openvino_tokenizers IRs written
beside the model by `to_openvino`). It is what a user who exports with optimum-intel would run,
so it is the row our own loop (`leanlm.generate.openvino`) is compared against, never our win.
Prompts go in as token ids, so every backend of a benchmark decodes exactly the same tokens.

Example:
    >>> peer = GenaiDecoder("runs/smollm2-ov-int4", threads=2)
    >>> r = peer.generate(lm.tokenizer("Once upon a time").input_ids, GenerationConfig(max_new_tokens=32))
    >>> r.prefill_s, r.decode_ms_per_token
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from leanlm.errors import ArtifactError, UnsupportedError
from leanlm.generate.config import GenerationConfig
from leanlm.generate.loop import GenerationResult


def require_genai() -> Any:
    """Import openvino_genai (the one place leanlm does), or say what to install."""
    try:
        import openvino_genai
    except ImportError as e:
        raise UnsupportedError(f"the openvino-genai backend needs OpenVINO GenAI: pip install 'leanlm[genai]' ({e})") from None
    return openvino_genai


class GenaiDecoder:
    """An `openvino_genai.LLMPipeline` over a model directory written for the openvino backend.

    Args:
        model: that directory, or a LeanModel on the openvino backend (saved to a temporary
            directory first, kept as long as this object lives).
        threads: INFERENCE_NUM_THREADS (default: $LEANLM_THREADS or every core).
        **properties: more CPU plugin properties (e.g. KV_CACHE_PRECISION="u8"); by default the
            ones the directory's leanlm.json records, as our own loop uses them.
    """

    def __init__(self, model: Any, threads: int | None = None, **properties: Any):
        from leanlm.artifact import read_record
        from leanlm.generate.openvino import IR_FILE, TOKENIZER_FILES, OpenVinoDecoder

        genai = require_genai()
        self._tmp: tempfile.TemporaryDirectory | None = None
        if isinstance(model, (str, os.PathLike)):
            directory = Path(model)
        else:
            if model.backend != "openvino" or model.task != "causal-lm":
                raise UnsupportedError(f"openvino-genai runs OpenVINO decoder directories; this model is "
                                       f"{model.task} on {model.backend}")
            self._tmp = tempfile.TemporaryDirectory(prefix="leanlm-genai-")
            directory = model.save(Path(self._tmp.name) / "model")
        record = read_record(directory, verify=False)
        missing = [f for f in (IR_FILE, *(f"{t}.xml" for t in TOKENIZER_FILES)) if not (directory / f).exists()]
        if record.backend != "openvino" or missing:
            raise ArtifactError(f"{directory} is not an OpenVINO decoder directory with its tokenizer "
                                f"(missing {', '.join(missing) or 'backend openvino'}); write it with leanlm export")
        rt = {k: v for k, v in record.extra.get("runtime", {}).items() if k not in ("backend", "kind", "weight_format")}
        props = {**OpenVinoDecoder.from_dict(rt).compile_props(threads), **properties}
        self.directory = directory
        self.pipe = genai.LLMPipeline(str(directory), "CPU", **props)

    def generate(self, ids: Sequence[int], config: GenerationConfig | None = None) -> GenerationResult:
        """Generate after prompt token ids; returns text, new token ids and GenAI's own timings.

        prefill_s is GenAI's time to first token; decode_s its mean time per output token
        times (new tokens - 1), so `decode_ms_per_token` reads the same as for our decoders.
        """
        import openvino as ov

        cfg = config or GenerationConfig()
        genai = require_genai()
        gc = genai.GenerationConfig()
        gc.max_new_tokens = cfg.max_new_tokens
        gc.ignore_eos = not cfg.stop_on_eos
        gc.do_sample = not cfg.greedy
        if not cfg.greedy:
            gc.temperature, gc.top_p = float(cfg.temperature), float(cfg.top_p)
            gc.top_k = int(cfg.top_k) if cfg.top_k else gc.top_k
            if cfg.seed is not None:
                gc.rng_seed = int(cfg.seed)
        gc.repetition_penalty = float(cfg.repetition_penalty)
        if cfg.stop:
            gc.stop_strings = set(cfg.stop)
        prompt = np.asarray(list(ids), dtype=np.int64)[None]
        out = self.pipe.generate(ov.Tensor(prompt), gc)
        tokens = [int(t) for t in out.tokens[0]]
        pm = out.perf_metrics
        text = self.pipe.get_tokenizer().decode(tokens) if tokens else ""
        return GenerationResult(text, tokens, int(prompt.shape[1]), "length" if len(tokens) >= cfg.max_new_tokens else "eos",
                                prefill_s=pm.get_ttft().mean / 1e3,
                                decode_s=pm.get_tpot().mean / 1e3 * max(0, len(tokens) - 1))
