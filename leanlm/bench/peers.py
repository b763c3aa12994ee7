"""The peer conversions a user would pick instead of leanlm, each built the way its tool's docs build it.

Shared by the benchmark scripts (quantize.py, compress.py) and `leanlm optimize`. Every peer is a LeanModel of the same
float PyTorch model, so `leanlm.bench.measure.benchmark` times it beside ours:

- ONNX Runtime dynamic int8: the optimizer-fused graph through `onnxruntime.quantization.quantize_dynamic`
  with ORT's defaults.
- OpenVINO bf16: `ov.convert_model(module, example_input=...)` straight from PyTorch (what OpenVINO's
  docs do; `leanlm.runtime.openvino.torch_graph` converts and verifies it), compiled on the CPU with
  INFERENCE_PRECISION_HINT=bf16, OpenVINO's own default on AMX CPUs.
- OpenVINO + NNCF int8: `nncf.quantize(ov_model, nncf.Dataset(items, transform_fn),
  model_type=nncf.ModelType.TRANSFORMER)` with NNCF's default preset and subset size (300) on
  training-split texts, one text per item as NNCF's transformer examples feed them; compiled with
  OpenVINO's defaults (bf16 for what stays float).

Static shapes: where our OpenVINO rows get static (batch, sequence) graphs, so do the OpenVINO peers
(`with_shapes`); other shapes, e.g. real traffic, run the dynamic graph.
"""
from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

PEER_ORT = "peer: ONNX Runtime dynamic int8"
PEER_OV = "peer: OpenVINO bf16"
PEER_NNCF = "peer: OpenVINO + NNCF int8"
NNCF_SUBSET = 300  # nncf.quantize's default subset_size: feed it that many items


def ort_dynamic_peer(model: Any) -> Any:
    """What a user gets from ONNX Runtime's own tooling: fused graph + quantize_dynamic with its defaults."""
    from onnxruntime.quantization import quantize_dynamic

    from leanlm.runtime.convert import convert
    from leanlm.runtime.onnx_export import quiet_ort_tools
    from leanlm.runtime.onnxruntime import GraphSource, ort_model

    fused = convert(model, "onnxruntime")
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fused.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fused.runner.source.read())
        with quiet_ort_tools():
            quantize_dynamic(src, dst, extra_options={"DefaultTensorType": 1})  # 1 = FLOAT (fused ops)
        peer = ort_model(GraphSource(data=dst.read_bytes()), model, fused.record.extra["runtime"])
    peer.record.notes.append("peer: onnxruntime.quantization.quantize_dynamic defaults on the fused graph")
    return peer


def _ov_peer(graph: Any, model: Any, how: str) -> Any:
    from leanlm.runtime.openvino import IrSource, ov_model

    peer = ov_model(IrSource.from_model(graph), model, {"graph": "openvino-pytorch-frontend", "peer": how},
                    precision="bf16")
    peer.record.notes.append(f"peer: {how}")
    return peer


def ov_bf16_peer(model: Any) -> Any:
    """OpenVINO straight from PyTorch (`ov.convert_model`), compiled with the bf16 precision hint."""
    from leanlm.runtime.openvino import torch_graph

    return _ov_peer(torch_graph(model), model, "ov.convert_model from PyTorch, INFERENCE_PRECISION_HINT=bf16")


def nncf_int8_peer(model: Any, calibration: Sequence[str]) -> Any:
    """NNCF's post-training int8 of OpenVINO's PyTorch-frontend graph with NNCF's defaults."""
    from leanlm.compress.quantize.nncf_static import require_nncf
    from leanlm.runtime.onnx_export import input_names
    from leanlm.runtime.openvino import torch_graph

    nncf = require_nncf()
    names = input_names(model)

    def transform_fn(text: str) -> dict:
        enc = model.tokenizer(text, truncation=True, max_length=128, return_tensors="np")
        return {k: enc[k].astype("int64") for k in names if k in enc}

    graph = torch_graph(model)
    with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars: keep stdout for the results
        q = nncf.quantize(graph, nncf.Dataset(list(calibration)[:NNCF_SUBSET], transform_fn),
                          model_type=nncf.ModelType.TRANSFORMER)
    return _ov_peer(q, model, "nncf.quantize(model_type=TRANSFORMER) defaults, OpenVINO CPU defaults (bf16)")


def build_peers(model: Any, calibration: Sequence[str], shapes: Sequence[Sequence[int]] = (),
                log: Callable[[str], None] = lambda m: None,
                which: Sequence[str] = (PEER_ORT, PEER_OV, PEER_NNCF)) -> tuple[dict[str, Any], dict[str, str], dict[str, float]]:
    """(name -> peer model, name -> skip reason, name -> build seconds) for the float `model`.

    OpenVINO peers compile `shapes` as static graphs besides the dynamic one.
    """
    from leanlm.errors import LeanlmError
    from leanlm.runtime.openvino import with_shapes

    makers = {PEER_ORT: lambda: ort_dynamic_peer(model), PEER_OV: lambda: ov_bf16_peer(model),
              PEER_NNCF: lambda: nncf_int8_peer(model, calibration)}
    peers: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for name in which:
        t0 = time.perf_counter()
        try:
            peer = makers[name]()
            if shapes and peer.backend == "openvino":
                peer = with_shapes(peer, shapes)
        except LeanlmError as e:
            skipped[name] = str(e)
            log(f"  skip {name}: {e}")
            continue
        peers[name] = peer
        seconds[name] = time.perf_counter() - t0
        log(f"  built {name} in {seconds[name]:.0f} s")
    return peers, skipped, seconds
