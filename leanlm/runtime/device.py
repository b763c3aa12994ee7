"""Device choice: one place decides CPU vs GPU and the dtype that suits it."""
from __future__ import annotations

from typing import Any

import torch

from leanlm.errors import UnsupportedError, did_you_mean

CHOICES = ("auto", "cpu", "cuda")


def pick_device(preferred: str = "auto") -> torch.device:
    """The torch device to run on.

    Args:
        preferred: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".

    Raises UnsupportedError when CUDA is asked for but not available.

    Example:
        >>> pick_device("auto")
        device(type='cpu')
    """
    if not isinstance(preferred, str):
        raise UnsupportedError(f"device must be a string, got {type(preferred).__name__}")
    name = preferred.strip().lower()
    base = name.split(":")[0]
    if base not in CHOICES:
        raise UnsupportedError(did_you_mean(name, list(CHOICES), "device"))
    if base == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if base == "cuda":
        if not torch.cuda.is_available():
            raise UnsupportedError("CUDA was requested but this PyTorch build sees no GPU; use --device cpu")
        if ":" in name:
            index = name.split(":", 1)[1]
            if not index.isdigit() or int(index) >= torch.cuda.device_count():
                raise UnsupportedError(f"no GPU {name}; this machine has {torch.cuda.device_count()}")
        return torch.device(name)
    return torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """Weights dtype for inference on `device`: bf16 on GPUs, fp32 on CPUs."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def to_device(model: Any, preferred: str = "auto") -> Any:
    """Move a torch LeanModel to the picked device (bf16 weights on GPU); returns it.

    Example:
        >>> lm = to_device(leanlm.load("smollm2-135m"), "auto")
    """
    device = pick_device(preferred)
    module = getattr(model, "module", None)
    if isinstance(module, torch.nn.Module):
        if device.type == "cuda":
            floating = all(p.dtype.is_floating_point for p in module.parameters())
            module.to(device=device, dtype=torch.bfloat16) if floating else module.to(device)
        else:
            module.to(device)
    return model
