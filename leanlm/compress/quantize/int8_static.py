"""int8 static quantization: int8 weights and activations, activation scales fixed by calibration.

The model is exported to ONNX and `onnxruntime.quantization.quantize_static` inserts
QuantizeLinear/DequantizeLinear (QDQ) pairs whose activation ranges come from running
calibration texts (drawn from the task's training split) through the float graph. The QDQ graph
is standard ONNX, so either runtime executes it: ONNX Runtime, or OpenVINO, which turns the QDQ
pairs into int8 kernels (VNNI / AMX-int8) and runs the rest in `precision` (bf16 by default).

Calibration methods: "minmax" (observed range), "percentile" (clip the histogram's tail at
`percentile`), "entropy" (KL-divergence-optimal clipping; slowest to calibrate).

Example:
    >>> quantize_(model, Int8Static(calibration="percentile"),
    ...           calibration=load_splits("movie-snippets").train.texts[:256])
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from leanlm.artifact import LeanModel
from leanlm.compress.quantize import DEFAULT_SKIP, FAMILY, QuantContext
from leanlm.config import BaseConfig, check, register, transform
from leanlm.errors import UnsupportedError

BACKENDS = ("openvino", "onnxruntime")
CALIBRATIONS = ("minmax", "percentile", "entropy")
ACTIVATION_TYPES = ("uint8", "int8")
# Op types that make sense to quantize in an encoder graph (ONNX Runtime's QDQ registry knows them).
OP_TYPES = ("MatMul", "Gemm", "Gather", "Add", "Mul", "Softmax", "Transpose", "Reshape", "LayerNormalization",
            "Where", "Concat", "Split")


@register(FAMILY, "int8-static")
@dataclass(frozen=True)
class Int8Static(BaseConfig):
    """int8 weights x int8 activations with calibrated activation ranges (ONNX QDQ graph).

    Args:
        backend: where the quantized graph runs: "openvino" or "onnxruntime".
        calibration: how activation ranges are chosen: "minmax", "percentile" or "entropy".
        percentile: for "percentile": the percentile of |activation| kept (the rest is clipped).
        samples: calibration texts used at most (from the context's calibration texts).
        per_channel: one weight scale per output channel (False: one per tensor).
        activations: "uint8" (asymmetric range, zero point anywhere) or "int8".
        symmetric_activations: force activation zero points to the middle of the range.
        op_types: ONNX op types to quantize; "MatMul" covers every linear layer (and attention's
            two activation x activation products when `attention_products`).
        attention_products: also quantize attention's Q.K^T and P.V products (activation x activation).
        skip: module-name parts left in float (heads by default).
        exclude_nodes: further ONNX node names left in float.
        precision: openvino only: precision of the layers left in float, "bf16" or "fp32".

    Example:
        >>> Int8Static(backend="onnxruntime", calibration="entropy", samples=64)
    """

    backend: str = "openvino"
    calibration: str = "minmax"
    percentile: float = 99.999
    samples: int = 128
    per_channel: bool = True
    activations: str = "uint8"
    symmetric_activations: bool = False
    op_types: tuple[str, ...] = ("MatMul",)
    attention_products: bool = True
    skip: tuple[str, ...] = DEFAULT_SKIP
    exclude_nodes: tuple[str, ...] = ()
    precision: str = "bf16"

    def validate(self) -> None:
        check(self.backend in BACKENDS, f"int8-static: backend must be one of {BACKENDS}, got {self.backend!r}")
        check(self.calibration in CALIBRATIONS,
              f"int8-static: calibration must be one of {CALIBRATIONS}, got {self.calibration!r}")
        check(isinstance(self.percentile, (int, float)) and 90.0 <= self.percentile <= 100.0,
              f"int8-static: percentile must be in [90, 100], got {self.percentile!r}")
        check(isinstance(self.samples, int) and self.samples >= 8,
              f"int8-static: samples must be an integer >= 8, got {self.samples!r}")
        check(self.activations in ACTIVATION_TYPES,
              f"int8-static: activations must be one of {ACTIVATION_TYPES}, got {self.activations!r}")
        check(len(self.op_types) > 0, "int8-static: op_types must name at least one op type")
        bad = [o for o in self.op_types if o not in OP_TYPES]
        check(not bad, f"int8-static: cannot quantize op type(s) {bad}; valid: {', '.join(OP_TYPES)}")
        check(all(isinstance(n, str) and n for n in self.exclude_nodes),
              "int8-static: exclude_nodes must be non-empty node names")
        check(self.precision in ("bf16", "fp32"), f"int8-static: precision must be 'bf16' or 'fp32', got {self.precision!r}")


def _reader(model: LeanModel, texts: Sequence[str], inputs: Sequence[str], batch_size: int, max_length: int) -> Any:
    """A CalibrationDataReader over tokenized calibration batches (numpy, only the graph's inputs)."""
    from onnxruntime.quantization import CalibrationDataReader

    batches = []
    for i in range(0, len(texts), batch_size):
        enc = model.tokenizer(list(texts[i : i + batch_size]), padding=True, truncation=True,
                              max_length=max_length, return_tensors="np")
        batches.append({k: enc[k].astype("int64") for k in inputs if k in enc})

    class Reader(CalibrationDataReader):
        # __len__ + set_range let ORT calibrate one batch at a time ("CalibStridedMinMax": 1):
        # the histogram calibrators then neither keep every batch's activations in memory nor
        # need all batches to have one shape.
        def __init__(self) -> None:
            self.set_range(0, len(batches))

        def __len__(self) -> int:
            return len(batches)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._it: Iterator[dict] = iter(batches[start_index:end_index])

        def get_next(self) -> dict | None:
            return next(self._it, None)

    return Reader()


@transform(Int8Static)
def _apply(model: LeanModel, config: Int8Static, ctx: QuantContext) -> dict:
    texts = ctx.require_calibration("int8-static")[: config.samples]
    from leanlm.runtime.convert import adopt
    from leanlm.runtime.onnx_export import _quiet_ort_python, exported, nodes_matching, require_onnx, require_ort
    from leanlm.runtime.onnxruntime import GraphSource

    onnx = require_onnx()
    require_ort()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[config.calibration]
    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[config.activations]
    # ORT fusions (com.microsoft ops) are not read by OpenVINO and hide the MatMuls from the
    # QDQ quantizer, so static quantization always works on the plain export.
    with exported(model, fuse=False) as (path, info):
        graph_inputs = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
        reader = _reader(model, texts, graph_inputs, ctx.batch_size, ctx.max_length)
        exclude = sorted(set(nodes_matching(path, config.skip)) | set(config.exclude_nodes))
        unknown = set(config.exclude_nodes) - {n.name for n in onnx.load(str(path), load_external_data=False).graph.node}
        if unknown:
            raise UnsupportedError(f"int8-static: exclude_nodes not in the graph: {sorted(unknown)[:3]}")
        out = path.with_name("model.qdq.onnx")
        extra: dict[str, Any] = {
            "ActivationSymmetric": config.symmetric_activations,
            "WeightSymmetric": True,
            "CalibPercentile": config.percentile,
            "CalibTensorRangeSymmetric": config.symmetric_activations,
            "CalibStridedMinMax": 1,
            "MatMulConstBOnly": not config.attention_products,
        }
        # the percentile calibrator prints its settings; keep the terminal for leanlm's own output
        with _quiet_ort_python(), contextlib.redirect_stdout(io.StringIO()):
            quantize_static(path, out, reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=list(config.op_types),
                            per_channel=config.per_channel, activation_type=qtype, weight_type=QuantType.QInt8,
                            nodes_to_exclude=exclude, calibrate_method=method, extra_options=extra)
        source = GraphSource(data=out.read_bytes())
        qnodes = sum(n.op_type == "QuantizeLinear" for n in onnx.load_from_string(source.data).graph.node)
    if config.backend == "openvino":
        from leanlm.runtime.openvino import ov_model

        converted = ov_model(source, model, info, precision=config.precision)
    else:
        from leanlm.runtime.onnxruntime import ort_model

        converted = ort_model(source, model, info)
    adopt(model, converted)
    return {"calibration_texts": len(texts), "excluded_nodes": len(exclude), "quantize_nodes": qnodes}
