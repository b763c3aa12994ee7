"""Move a float PyTorch encoder onto another runtime: ONNX Runtime or OpenVINO.

`convert` exports the model to ONNX (verified against PyTorch), fuses it for ONNX Runtime or
hands the plain graph to OpenVINO, and returns a new LeanModel; the original is untouched. The
conversion is recorded in `record.extra["runtime"]`, so a saved model directory says how it runs.

Example:
    >>> m = leanlm.load("runs/sentiment")
    >>> fast = convert(m, "openvino", precision="bf16")
    >>> fast.predict(["a fine film"]) == m.predict(["a fine film"])
    >>> fast.save("runs/sentiment-ov")
"""
from __future__ import annotations

from leanlm.artifact import LeanModel
from leanlm.errors import UnsupportedError, did_you_mean
from leanlm.runtime.onnx_export import DEFAULT_OPSET, exported

BACKENDS = ("onnxruntime", "openvino")
PRECISIONS = {"onnxruntime": ("fp32",), "openvino": ("fp32", "bf16", "fp16")}


def convert(model: LeanModel, backend: str = "onnxruntime", precision: str = "fp32", *, fuse: bool = True,
            hint: str = "latency", opset: int = DEFAULT_OPSET, exporter: str = "auto") -> LeanModel:
    """Return a copy of a float PyTorch encoder that runs on `backend`.

    Args:
        model: a float PyTorch encoder (sequence-classification or feature-extraction).
        backend: "onnxruntime" or "openvino".
        precision: "fp32" (both), "bf16" or "fp16" (openvino; falls back to fp32 on CPUs without
            the capability, noted in record.notes). ONNX Runtime's CPU provider has no fast bf16/fp16
            path: for reduced precision there use OpenVINO, or int8 via quantize.
        fuse: ONNX Runtime only: fuse attention/LayerNorm/GELU with its transformer optimizer.
        hint: OpenVINO only: "latency" (one stream, all threads) or "throughput" (several streams,
            for many concurrent requests).
        opset: ONNX opset (>= 17).
        exporter: "auto", "torchscript" or "dynamo" (see leanlm.runtime.onnx_export).

    Example:
        >>> peer = convert(leanlm.load("minilm-l6"), "openvino", precision="bf16")
    """
    if backend not in BACKENDS:
        raise UnsupportedError(did_you_mean(backend, BACKENDS, "conversion backend"))
    if precision not in PRECISIONS[backend]:
        raise UnsupportedError(f"{backend} runs precision {', '.join(PRECISIONS[backend])} on this CPU, not "
                               f"{precision!r}" + (" (use backend='openvino' for bf16/fp16)" if backend == "onnxruntime" else ""))
    if model.backend != "torch":
        raise UnsupportedError(f"convert needs a PyTorch model; this one already runs on {model.backend}")
    from leanlm.runtime.onnxruntime import GraphSource

    # ORT fusions use com.microsoft contrib ops that OpenVINO does not read: fuse for ORT only.
    with exported(model, fuse=fuse and backend == "onnxruntime", opset=opset, exporter=exporter) as (path, info):
        source = GraphSource(data=path.read_bytes())
    info = {**info, "source_backend": model.backend, "converted_by": "leanlm.runtime.convert"}
    if backend == "onnxruntime":
        from leanlm.runtime.onnxruntime import ort_model

        return ort_model(source, model, {**info, "precision": precision})
    from leanlm.runtime.openvino import ov_model

    return ov_model(source, model, info, precision=precision, hint=hint)


def adopt(model: LeanModel, converted: LeanModel) -> LeanModel:
    """Make `model` (in place) the converted one: same runner, backend and runtime record.

    In-place quantizers that produce a graph (int8 on ONNX Runtime / OpenVINO) use this: the
    caller's LeanModel object now runs the graph and no longer holds a PyTorch module.
    """
    model.module = None
    model.runner = converted.runner
    model.record.backend = converted.record.backend
    model.record.weights = converted.record.weights
    model.record.extra["runtime"] = converted.record.extra["runtime"]
    for note in converted.record.notes:
        if note not in model.record.notes:
            model.record.notes.append(note)
    return model
