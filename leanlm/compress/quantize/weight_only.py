"""Weight-only quantization: int8 (per channel or group) and int4 (group-wise) weights, float activations.

Made for batch-1 decoding, where reading the weights is the cost: int4 reads 1/8 of the fp32
bytes. Runs on ATen's CPU weight-only kernels through `_layers.Int8WeightCPU` / `Int4WeightCPU`
(see that module for why not torchao's tensors); batches of many tokens dequantize to bf16 and use
the bf16 GEMM. Decoders keep `lm_head` (tied to the embeddings) in float by default.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from leanlm.artifact import LeanModel
from leanlm.compress.quantize import DEFAULT_SKIP, FAMILY, QuantContext, eligible_linears
from leanlm.compress.quantize._layers import INT4_GROUP_SIZES, Int4WeightCPU, Int8WeightCPU, set_weight
from leanlm.config import BaseConfig, check, register, transform
from leanlm.errors import UnsupportedError


def _check_group_size(method: str, group_size: int, allowed: tuple[int, ...]) -> None:
    check(isinstance(group_size, int) and not isinstance(group_size, bool),
          f"{method}: group_size must be an integer, got {group_size!r}")
    check(group_size in allowed, f"{method}: group_size must be one of {', '.join(map(str, allowed))}; got {group_size}")


def check_divides(method: str, targets: dict[str, torch.nn.Linear], group_size: int) -> None:
    """Refuse (one line) if `group_size` does not divide some layer's in_features."""
    bad = {n: m.in_features for n, m in targets.items() if group_size and m.in_features % group_size}
    if bad:
        name, k = next(iter(bad.items()))
        raise UnsupportedError(f"{method}: group_size {group_size} does not divide in_features of {len(bad)} "
                               f"layer(s) (e.g. {name}: {k}); pick a smaller group_size or add them to skip")


def targets_or_raise(method: str, model: LeanModel, skip: tuple[str, ...]) -> dict[str, torch.nn.Linear]:
    targets = eligible_linears(model.module, skip)
    if not targets:
        raise UnsupportedError(f"{method}: the model has no eligible linear layers (skip={list(skip)})")
    return targets


def quantized_bytes(targets: dict[str, torch.nn.Linear]) -> int:
    return sum(m.weight.nbytes_packed() for m in targets.values())


@register(FAMILY, "int8-weight-only")
@dataclass(frozen=True)
class Int8WeightOnly(BaseConfig):
    """int8 weights, float activations: 4x smaller linears, faster batch-1 decoding on CPU.

    Args:
        group_size: input columns per scale; 0 = one scale per output channel (uses ATen's int8
            GEMV kernel; group-wise scales dequantize on every call and are slower).
        skip: module-name parts left in float (heads and the tied lm_head by default).

    Example:
        >>> leanlm.quantize_(model, Int8WeightOnly())
    """

    group_size: int = 0
    skip: tuple[str, ...] = DEFAULT_SKIP

    def validate(self) -> None:
        _check_group_size(self.name, self.group_size, (0, 16, 32, 64, 128, 256, 512, 1024))


@register(FAMILY, "int4-weight-only")
@dataclass(frozen=True)
class Int4WeightOnly(BaseConfig):
    """int4 group-wise weights (round to nearest), float activations: 8x smaller linears, fast batch-1 decode.

    Args:
        group_size: input columns sharing one (scale, zero); 32, 64, 128 or 256 (ATen's int4
            kernel). Smaller groups are more accurate and slightly larger. 32 also matches GGUF
            Q4 blocks: SmolLM2 (shipped as Q4_1) re-quantizes almost losslessly (KLD 0.0004 vs
            0.29 at 64).
        skip: module-name parts left in float (heads and the tied lm_head by default).

    Example:
        >>> leanlm.quantize_(model, Int4WeightOnly(group_size=64))
    """

    group_size: int = 32
    skip: tuple[str, ...] = DEFAULT_SKIP

    def validate(self) -> None:
        _check_group_size(self.name, self.group_size, INT4_GROUP_SIZES)


@torch.no_grad()
def _apply_weight_only(model: LeanModel, method: str, skip: tuple[str, ...], group_size: int, make) -> dict:
    targets = targets_or_raise(method, model, skip)
    check_divides(method, targets, group_size)
    float_bytes = sum(m.weight.nbytes for m in targets.values())
    for lin in targets.values():
        set_weight(lin, make(lin.weight.detach()))
    return {"layers": len(targets), "group_size": group_size,
            "linear_bytes": {"float": float_bytes, "quantized": quantized_bytes(targets)}}


@transform(Int8WeightOnly)
def _apply_int8(model: LeanModel, config: Int8WeightOnly, ctx: QuantContext) -> dict:
    return _apply_weight_only(model, config.name, config.skip, config.group_size,
                              lambda w: Int8WeightCPU.from_float(w, config.group_size))


@transform(Int4WeightOnly)
def _apply_int4(model: LeanModel, config: Int4WeightOnly, ctx: QuantContext) -> dict:
    return _apply_weight_only(model, config.name, config.skip, config.group_size,
                              lambda w: Int4WeightCPU.from_float(w, config.group_size))
