"""The decoder peers a user would pick instead of leanlm, each built the way its own tool builds it.

Shared by benchmarks/decode_paired.py. Every peer decodes the same prompt ids greedily and can
score the same token windows (logits), so speed and KL divergence are measured on equal terms:

- llama.cpp: our F32 GGUF export of the model (`leanlm.export.gguf`), quantized by llama.cpp's own
  quantizer (`llama_model_quantize`, what its `llama-quantize` tool calls; llama-cpp-python ships it,
  not the tool) to q8_0 / q4_0 / q4_1 / Q4_K_M, so each file has llama.cpp's own tensor mix.
- OpenVINO GenAI: a stateful OpenVINO IR (KV cache held as model state, `beam_idx` input, as
  GenAI's LLMPipeline expects) with NNCF weight compression (`nncf.compress_weights`, int8 per
  channel / int4 groups of 64), the tokenizer from `openvino_tokenizers.convert_tokenizer`, run by
  `openvino_genai.LLMPipeline(dir, "CPU", INFERENCE_NUM_THREADS=threads)` with a greedy
  `GenerationConfig`; prefill and per-token times also come from GenAI's own `perf_metrics`.

The GenAI folder is written by leanlm's converter (`genai_ir`), since optimum-intel would replace
this torch; it does what optimum's export does (stateful KV cache, `beam_idx`), with NNCF at the
weight settings in OV_WEIGHTS.
"""
from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from leanlm.errors import UnsupportedError
from leanlm.generate.openvino_genai import require_genai

# nncf.compress_weights settings per weight format; int4 groups of 64 divide SmolLM2's 576 / 1536
# widths (NNCF's usual 128 does not); what NNCF keeps at 8 bits (embeddings) is its own default
OV_WEIGHTS = {"int8": {"mode": "INT8_ASYM"}, "int4": {"mode": "INT4_ASYM", "group_size": 64}}


# --------------------------------------------------------------------------- llama.cpp

def llamacpp_gguf(lm: Any, workdir: Path, type: str, threads: int) -> Path:
    """A GGUF of `lm` in llama.cpp's file type `type`, via our F32 export and llama.cpp's quantizer."""
    from leanlm.export.gguf import export_gguf
    from leanlm.runtime import llamacpp

    reason = llamacpp.unavailable_reason()
    if reason:
        raise UnsupportedError(reason)
    src = workdir / "model-f32.gguf"
    if not src.exists():  # one float export feeds every file type
        export_gguf(lm, src, "f32")
    return llamacpp.quantize_gguf(src, workdir / f"model-{type}.gguf", type, threads)


# --------------------------------------------------------------------------- OpenVINO GenAI

def genai_ir(lm: Any, out: Path, weights: str) -> Path:
    """`lm` -> a GenAI model folder `out` (stateful IR + openvino_tokenizers IRs), NNCF-compressed.

    The conversion is leanlm's (`leanlm.generate.openvino.to_openvino`: `ov.convert_model`, a
    `beam_idx` input and the KV cache made model state, as optimum-intel's export does) because
    optimum-intel itself would replace this torch; the weights follow OV_WEIGHTS, not our choices.

    Args:
        lm: a float causal-lm LeanModel (Llama family).
        out: folder to (re)write.
        weights: "int8" or "int4".
    """
    require_genai()
    from leanlm.generate.openvino import OpenVinoDecoder, to_openvino

    opts = OV_WEIGHTS[weights]
    config = OpenVinoDecoder(weights=weights, mode="asym", group_size=opts.get("group_size", -1) if weights == "int4" else 128,
                             group_fallback="error")
    with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress tables: keep stdout for the results
        converted = to_openvino(lm, config)
    shutil.rmtree(out, ignore_errors=True)
    converted.save(out)
    return out


def genai_pipeline(ir_dir: str | Path, threads: int) -> Any:
    """`openvino_genai.LLMPipeline` on the CPU for a GenAI model folder, with `threads` threads.

    Prefix caching is switched off: the benchmark sends one prompt every round, and with GenAI's
    default cache its "time to first token" became a cache hit (measured: 22-38 ms for the same
    128-token prompt again, 190-250 ms for a fresh one, 175-200 ms either way without the cache),
    while every other row computes the whole prompt each time.
    """
    g = require_genai()
    scheduler = g.SchedulerConfig()
    scheduler.enable_prefix_caching = False
    return g.LLMPipeline(str(ir_dir), "CPU", INFERENCE_NUM_THREADS=threads, scheduler_config=scheduler)


def genai_run(pipe: Any, ids: torch.Tensor, metrics: dict) -> Callable[[int], list[int]]:
    """run(n) -> n greedy token ids after `ids` (EOS ignored); GenAI's own TTFT / TPOT into `metrics`."""
    import openvino as ov

    g = require_genai()
    x = ids[None].numpy().astype(np.int64)
    inputs = g.TokenizedInputs(ov.Tensor(x), ov.Tensor(np.ones_like(x)))

    def run(n: int) -> list[int]:
        cfg = g.GenerationConfig(max_new_tokens=n, do_sample=False)
        cfg.min_new_tokens, cfg.ignore_eos = n, True  # benchmarks always produce n tokens
        r = pipe.generate(inputs, cfg)
        pm = r.perf_metrics
        metrics.setdefault("genai_ttft_ms", []).append(float(pm.get_ttft().mean))
        if n > 1:
            metrics.setdefault("genai_tpot_ms", []).append(float(pm.get_tpot().mean))
        return [int(t) for t in r.tokens[0]]

    return run


def ov_ir_logits(ir_dir: Any, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """ids (T,) -> logits (T, V) of an OpenVINO decoder folder (or LeanModel), one fresh-state call.

    For a GenAI folder these are the logits of the very IR GenAI runs.

    Compiled with the plugin defaults GenAI gets (bf16 inference where the CPU has it); GenAI's
    own KV-cache precision does not enter, since the whole window is one forward.
    """
    from leanlm.generate.openvino import ov_decoder

    dec = ov_decoder(ir_dir, threads=threads)

    def logits(ids: torch.Tensor) -> torch.Tensor:
        dec.reset(int(ids.shape[0]))
        return dec.forward(ids, all_logits=True)

    return logits


# --------------------------------------------------------------------------- leanlm's own OpenVINO decoder

def leanlm_ov_decoder() -> Callable[..., Any]:
    """leanlm's own OpenVINO decoder factory (`leanlm.generate.openvino.ov_decoder`)."""
    from leanlm.generate.openvino import ov_decoder

    return ov_decoder
