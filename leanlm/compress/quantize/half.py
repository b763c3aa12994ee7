"""Half precision: cast the whole model to bfloat16 (or float16) weights and activations.

On CPUs with avx512_bf16 / AMX-bf16, oneDNN runs bf16 GEMMs several times faster than fp32, which
makes this the simplest fast path for encoders at batch size > 1. fp16 GEMM on x86 CPUs without
AMX-fp16 falls back to slow kernels (measured here: slower than fp32), so fp16 is refused unless
the CPU has amx_fp16 or `force=True` asks for the memory saving anyway.
"""
from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from leanlm.artifact import LeanModel, restore
from leanlm.compress.quantize import FAMILY, QuantContext
from leanlm.config import BaseConfig, check, register, transform
from leanlm.errors import UnsupportedError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# CPU feature flags (Linux /proc/cpuinfo names) that make each dtype's matmul fast
FAST_FLAGS = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("amx_fp16",)}
ARM_FAST_FLAGS = {"bf16": ("bf16",), "fp16": ("asimdhp",)}


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo does not exist)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def fast_on_this_cpu(dtype: str) -> bool:
    arm = platform.machine().lower() in ("arm64", "aarch64")
    return any(f in cpu_flags() for f in (ARM_FAST_FLAGS if arm else FAST_FLAGS)[dtype])


@register(FAMILY, "half")
@dataclass(frozen=True)
class Half(BaseConfig):
    """Cast weights and activations to bf16 (or fp16): half the bytes; fast on CPUs with bf16 units.

    Args:
        dtype: "bf16" or "fp16".
        force: cast even if this CPU has no fast kernels for `dtype` (memory saving only).

    Example:
        >>> leanlm.quantize_(model, Half("bf16"))
    """

    dtype: str = "bf16"
    force: bool = False

    def validate(self) -> None:
        check(self.dtype in DTYPES, f"half: dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        check(isinstance(self.force, bool), f"half: force must be true or false, got {self.force!r}")


@transform(Half)
def _apply(model: LeanModel, config: Half, ctx: QuantContext) -> dict:
    if model.device.type == "cpu" and not config.force and not fast_on_this_cpu(config.dtype):
        want = " or ".join(FAST_FLAGS[config.dtype])
        raise UnsupportedError(f"half: this CPU has no fast {config.dtype} matmul ({want} missing), so it would run "
                               f"slower than fp32; use {'bf16' if config.dtype == 'fp16' else 'int8-dynamic'} "
                               "or pass force=True for the memory saving alone")
    if not any(p.is_floating_point() for p in model.module.parameters()):
        raise UnsupportedError("half: the model has no floating-point weights")
    _cast(model.module, config)
    return {"dtype": config.dtype}


@restore(Half)
def _cast(module: torch.nn.Module, config: Half) -> None:
    # Casting the module (not just the loaded tensors) also casts non-persistent buffers such as
    # rotary inv_freq, so a reloaded model computes exactly what the saved one did.
    module.to(DTYPES[config.dtype])
