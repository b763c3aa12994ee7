"""int8 dynamic quantization: int8 per-channel weights, activations quantized per token at run time.

Two backends:
- "torch": torchao's `Int8DynamicActivationInt8WeightConfig` (not the deprecated
  torch.ao.quantization). Fastest under torch.compile; judge it there.
- "onnxruntime": export to ONNX, fuse attention/LayerNorm/GELU with ONNX Runtime's transformer
  optimizer, then `onnxruntime.quantization.quantize_dynamic` (int8 weights, per output channel
  by default; activations quantized per batch at run time). The model then runs on ONNX Runtime.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Optional

from leanlm.artifact import LeanModel
from leanlm.compress.quantize import DEFAULT_SKIP, FAMILY, QuantContext, eligible_linears
from leanlm.compress.quantize.half import cpu_flags
from leanlm.config import BaseConfig, check, register, transform
from leanlm.errors import UnsupportedError

BACKENDS = ("torch", "onnxruntime")
# What ONNX Runtime quantizes dynamically. Gather (embedding tables) is left out on purpose: it
# makes the file 4x smaller but runs no faster, and per-tensor int8 embeddings cost fidelity.
ORT_OP_TYPES = ("MatMul", "Attention")


@register(FAMILY, "int8-dynamic")
@dataclass(frozen=True)
class Int8Dynamic(BaseConfig):
    """int8 weights (per channel) x int8 activations (per token, at run time) for linear layers.

    Args:
        backend: "torch" (torchao) or "onnxruntime" (ONNX Runtime quantize_dynamic on the fused graph).
        skip: module-name parts left in float (heads by default).
        per_channel: onnxruntime only: one weight scale per output channel (False: per tensor).
            torchao is always per channel.
        fuse: onnxruntime only: fuse attention/LayerNorm/GELU before quantizing, so attention's
            Q/K/V projection is one int8 MatMul.
        embeddings: onnxruntime only: also quantize the embedding tables (4x smaller file, no faster).
        reduce_range: onnxruntime only: 7-bit weights. None (default) decides by this CPU: an x86 CPU
            without VNNI (AVX2 only) multiplies u8 activations by s8 weights in pairs summed in
            int16, which saturates with 8-bit weights (ONNX Runtime's own advice for such CPUs);
            7-bit weights cannot overflow it. The choice made is recorded with the model.

    Example:
        >>> quantize_(model, Int8Dynamic(backend="onnxruntime"))   # model now runs on ONNX Runtime
    """

    backend: str = "torch"
    skip: tuple[str, ...] = DEFAULT_SKIP
    per_channel: bool = True
    fuse: bool = True
    embeddings: bool = False
    reduce_range: Optional[bool] = None

    def validate(self) -> None:
        check(self.backend in BACKENDS, f"int8-dynamic: backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "torch":
            check(self.per_channel, "int8-dynamic: the torch backend (torchao) is always per channel; "
                                    "per_channel=False needs backend='onnxruntime'")
            check(not self.embeddings, "int8-dynamic: embeddings=True needs backend='onnxruntime'")
            check(self.reduce_range is None, "int8-dynamic: reduce_range needs backend='onnxruntime'")


def int16_saturation_risk() -> bool:
    """Whether this CPU runs ONNX Runtime's u8 x s8 int8 MatMul with pairwise int16 sums (x86 without VNNI)."""
    flags = cpu_flags()
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86") or not flags:
        return False  # not x86, or flags unknown: keep ONNX Runtime's default
    return not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}


@transform(Int8Dynamic)
def _apply(model: LeanModel, config: Int8Dynamic, ctx: QuantContext) -> dict:
    if config.backend == "onnxruntime":
        return _apply_ort(model, config)
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_ as ao_quantize_

    targets = eligible_linears(model.module, config.skip)
    if not targets:
        raise UnsupportedError("int8-dynamic: the model has no eligible linear layers")
    chosen = set(targets)
    ao_quantize_(model.module, Int8DynamicActivationInt8WeightConfig(),
                 filter_fn=lambda m, fqn: fqn in chosen)
    return {"layers": len(chosen)}


def _apply_ort(model: LeanModel, config: Int8Dynamic) -> dict:
    from leanlm.runtime.convert import adopt
    from leanlm.runtime.onnx_export import quiet_ort_tools, exported, nodes_matching, require_onnx, require_ort
    from leanlm.runtime.onnxruntime import GraphSource, ort_model

    onnx = require_onnx()
    require_ort()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    op_types = list(ORT_OP_TYPES) + (["Gather", "EmbedLayerNormalization"] if config.embeddings else [])
    with exported(model, fuse=config.fuse) as (path, info):
        exclude = nodes_matching(path, config.skip)
        out = path.with_name("model.int8.onnx")
        reduce_range = int16_saturation_risk() if config.reduce_range is None else config.reduce_range
        with quiet_ort_tools():
            quantize_dynamic(path, out, op_types_to_quantize=op_types, per_channel=config.per_channel,
                             reduce_range=reduce_range,
                             weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                             # fused contrib ops defeat ONNX shape inference; their outputs are float
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True})
        source = GraphSource(data=out.read_bytes())
    adopt(model, ort_model(source, model, info))
    return {"excluded_nodes": len(exclude), "reduce_range": reduce_range}
