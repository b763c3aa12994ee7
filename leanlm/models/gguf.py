"""GGUF import: dequantize once into a cached safetensors directory.

transformers 5 refuses `save_pretrained` on a GGUF-loaded model, so we drop
`config.quantization_config`, rebuild the model from its config, copy the state dict and save.
"""
from __future__ import annotations

import os
from pathlib import Path

from leanlm.data.sources import cache_dir
from leanlm.errors import LeanlmError


def cached_gguf_conversion(gguf_path: Path, name: str) -> Path:
    """Return a HF safetensors directory converted from `gguf_path`, converting on first use."""
    if not gguf_path.exists():
        raise LeanlmError(f"GGUF file {gguf_path} not found")
    stat = gguf_path.stat()
    target = cache_dir() / "models" / f"{name}-{stat.st_size}"
    if (target / "model.safetensors").exists() and (target / "config.json").exists():
        return target
    return convert_gguf(gguf_path, target)


def convert_gguf(gguf_path: Path, target: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from leanlm.artifact import atomic_dir
    from leanlm.models.loading import quiet_transformers

    try:
        import gguf  # noqa: F401  (transformers needs it; fail with the install hint here)
    except ImportError:
        raise LeanlmError("reading GGUF files needs the gguf package: pip install gguf") from None
    folder, fname = str(gguf_path.parent), gguf_path.name
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        clean = AutoModelForCausalLM.from_config(config)
        clean.load_state_dict(model.state_dict(), strict=False)
        clean.tie_weights()
    with atomic_dir(target, overwrite=True) as tmp:
        clean.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"converted from {gguf_path.name} ({os.path.getsize(gguf_path)} bytes)\n")
    return target
