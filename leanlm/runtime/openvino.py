"""OpenVINO backend: compile an ONNX graph (float or int8 QDQ) or an OpenVINO IR for the CPU.

A model directory for this backend holds `model.onnx` (or `model.xml` + `model.bin`),
`config.json` and the tokenizer; `leanlm.json` -> extra.runtime records the compile settings:

- precision: "fp32" | "bf16" | "fp16" -> OpenVINO's INFERENCE_PRECISION_HINT. bf16 runs on
  avx512_bf16 / AMX-bf16, fp16 on AMX-fp16 / avx512_fp16; when the CPU lacks the capability the
  model runs in f32 and says so (record.notes). Note OpenVINO's own CPU default on bf16-capable
  CPUs is bf16: "fp32" here asks for f32 explicitly, so a float model is really float.
  int8 QDQ graphs (from int8-static) run their quantized MatMuls in int8 (VNNI / AMX-int8)
  whatever the hint; the hint sets the precision of the layers left in float.
- hint: "latency" (default) | "throughput" -> PERFORMANCE_HINT. Our runner is synchronous (one
  batch at a time), so LATENCY, one stream over all threads, is the fast choice for batch 1 and
  batch 32 alike. THROUGHPUT splits the cores into streams, which only pays off when many
  requests run concurrently (e.g. a server issuing async requests), so it is opt-in.
- threads: INFERENCE_NUM_THREADS = $LEANLM_THREADS, else every core this process may use.
- shapes: optional static (batch, sequence) shapes compiled besides the dynamic graph
  (`with_shapes`); inputs of exactly such a shape run the static graph (~10% faster here).
- sparse_weights_rate: optional CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE (`with_sparse_weights`):
  int8 FullyConnected layers at least this sparse may use the sparse AMX kernel.

Graphs come from ONNX (`convert`, int8-static's QDQ graph) or from OpenVINO's own PyTorch
frontend (`torch_graph`: attention arrives as one ScaledDotProductAttention op), which NNCF
quantizes into an IR held in memory (`IrSource`) and saved as model.xml + model.bin.

Example:
    >>> ov_model = convert(leanlm.load("minilm-l6"), "openvino", precision="bf16")
    >>> ov_model.save("runs/minilm-ov")
"""
from __future__ import annotations

import copy
import io
import shutil
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from leanlm.artifact import LeanModel, Record
from leanlm.errors import ArtifactError, UnsupportedError
from leanlm.runtime import register_backend
from leanlm.runtime.onnxruntime import ONNX_FILE, GraphSource, as_outputs, load_parts, output_count, thread_count, \
    to_feed

PRECISIONS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
_CAPABILITY = {"bf16": "BF16", "fp16": "FP16"}
HINTS = ("latency", "throughput")
IR_FILE = "model.xml"
_NP = {"i64": np.int64, "i32": np.int32, "f32": np.float32, "boolean": np.bool_}
_CORE: Any = None


def require_openvino() -> Any:
    """Import openvino (the one place leanlm does), or say what to install."""
    try:
        import openvino
    except ImportError:
        raise UnsupportedError("the openvino backend needs OpenVINO: pip install 'leanlm[openvino]'") from None
    return openvino


def core() -> Any:
    global _CORE
    if _CORE is None:
        _CORE = require_openvino().Core()
    return _CORE


def effective_precision(precision: str) -> str:
    """The precision this CPU will really run: `precision` if it has the capability, else fp32."""
    if precision not in PRECISIONS:
        raise UnsupportedError(f"openvino precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    need = _CAPABILITY.get(precision)
    if need and need not in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return "fp32"
    return precision


class IrSource:
    """An OpenVINO IR held in memory (model.xml text + model.bin weights), e.g. fresh from NNCF.

    Saved as model.xml + model.bin; a loaded model reads them back through a GraphSource path.
    """

    def __init__(self, xml: bytes, weights: bytes):
        self.xml, self.weights = xml, weights

    @classmethod
    def from_model(cls, model: Any) -> "IrSource":
        """Serialize an `openvino.Model` (weights kept in their own precision, no fp16 compression)."""
        import tempfile

        ov = require_openvino()
        with tempfile.TemporaryDirectory(prefix="leanlm-ir-") as tmp:
            xml = Path(tmp) / IR_FILE
            ov.save_model(model, str(xml), compress_to_fp16=False)
            return cls(xml.read_bytes(), xml.with_suffix(".bin").read_bytes())

    @property
    def nbytes(self) -> int:
        return len(self.xml) + len(self.weights)


def torch_graph(model: LeanModel) -> Any:
    """The float PyTorch encoder as an `openvino.Model` via OpenVINO's PyTorch frontend, verified.

    Dynamic batch and sequence axes. Unlike the ONNX path, attention stays one
    ScaledDotProductAttention op, which the CPU plugin runs as a fused kernel and NNCF knows how
    to quantize around. The graph is checked against PyTorch on shapes other than the traced one.
    """
    from leanlm.runtime.onnx_export import _CHECK_TEXTS, ENCODER_TASKS, _quiet_export, _sample, compare_with_torch, \
        input_names
    from leanlm.runtime.torch_eager import _is_plain

    ov = require_openvino()
    if model.task not in ENCODER_TASKS:
        raise UnsupportedError(f"OpenVINO conversion supports encoders ({', '.join(ENCODER_TASKS)}); "
                               f"this model is {model.task}")
    module = model.module
    if not isinstance(module, torch.nn.Module) or not _is_plain(module):
        raise UnsupportedError("OpenVINO conversion needs a float PyTorch model; this one runs on "
                               f"{model.backend} or has quantized layers")
    module = copy.deepcopy(module).float().eval().cpu()
    module.config.return_dict = False  # tuples: the frontend's first output is the task's tensor
    with torch.no_grad(), _quiet_export():
        graph = ov.convert_model(module, example_input=_sample(model, _CHECK_TEXTS[:2], input_names(model),
                                                               max_length=32))
    graph.reshape({p.get_any_name(): ov.PartialShape([-1, -1]) for p in graph.inputs})
    compiled = core().compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    run = lambda batch: list(compiled({p.get_any_name(): batch[p.get_any_name()].numpy()  # noqa: E731
                                       for p in compiled.inputs}).values())
    compare_with_torch(model, module, run, "OpenVINO's PyTorch frontend graph")
    return graph


class OvRunner:
    """A compiled OpenVINO model behind the PyTorch calling convention: `runner(**batch) -> torch.Tensor`.

    Args:
        source: the graph (ONNX bytes/file, or an IR .xml whose .bin sits next to it).
        config: the HF config (LeanModel reads max_position_embeddings from it).
        precision: "fp32" | "bf16" | "fp16" for layers not already int8 (falls back to fp32).
        hint: "latency" | "throughput".
        sparse_rate: CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE in (0, 1], or None for OpenVINO's default
            (off); see `with_sparse_weights`.
        outputs: how many leading graph outputs a call returns: 1 (a tensor) or more (a tuple:
            question answering's start and end logits).
    """

    def __init__(self, source: GraphSource | IrSource, config: Any = None, precision: str = "fp32", hint: str = "latency",
                 threads: int | None = None, shapes: Sequence[Sequence[int]] = (), sparse_rate: float | None = None,
                 outputs: int = 1):
        if hint not in HINTS:
            raise UnsupportedError(f"openvino hint must be 'latency' or 'throughput', got {hint!r}")
        self.source, self.config, self.hint = source, config, hint
        self.precision = effective_precision(precision)
        self.requested_precision = precision
        self.threads = threads or thread_count()
        self.shapes = _check_shapes(shapes)
        self.props = {
            "INFERENCE_PRECISION_HINT": PRECISIONS[self.precision],
            "PERFORMANCE_HINT": hint.upper(),
            "INFERENCE_NUM_THREADS": self.threads,
        }
        self.sparse_rate = _check_rate(sparse_rate)
        if self.sparse_rate is not None:
            self.props[SPARSE_RATE] = self.sparse_rate
        self.compiled = self._compile(None)
        self.request = self.compiled.create_infer_request()
        # (batch, sequence) -> (compiled, request) for the static shapes; others use the dynamic graph
        self.static = {shape: self._static(shape) for shape in self.shapes}
        self.inputs = {p.get_any_name(): _NP.get(p.get_element_type().get_type_name(), np.int64)
                       for p in self.compiled.inputs}
        if len(self.compiled.outputs) < outputs:
            raise ArtifactError(f"the graph has {len(self.compiled.outputs)} output(s); this task needs {outputs}")
        self.outputs = outputs

    def read(self) -> Any:
        """The graph as an uncompiled `openvino.Model`."""
        src = self.source
        if isinstance(src, IrSource):
            return core().read_model(src.xml, src.weights)
        return core().read_model(io.BytesIO(src.data) if src.data is not None else str(src.path))

    def _compile(self, shape: tuple[int, int] | None) -> Any:
        try:
            model = self.read()
            if shape is not None:
                model.reshape({p.get_any_name(): list(shape) for p in model.inputs})
            return core().compile_model(model, "CPU", self.props)
        except RuntimeError as e:
            raise ArtifactError(f"OpenVINO cannot compile the graph: {str(e).splitlines()[0]}") from e

    def _static(self, shape: tuple[int, int]) -> tuple[Any, Any]:
        compiled = self._compile(shape)
        return compiled, compiled.create_infer_request()

    def __call__(self, **batch: torch.Tensor) -> torch.Tensor:
        feed = to_feed(batch, self.inputs)
        compiled, request = self.static.get(next(iter(feed.values())).shape, (self.compiled, self.request))
        # share_inputs: the arrays live until infer returns; outputs are copied (default)
        result = request.infer(feed, share_inputs=True)
        return as_outputs([result[compiled.output(i)] for i in range(self.outputs)], self.outputs)

    def __deepcopy__(self, memo: dict) -> "OvRunner":
        return OvRunner(self.source, copy.deepcopy(self.config, memo), self.requested_precision, self.hint,
                        self.threads, self.shapes, self.sparse_rate, self.outputs)


def _check_shapes(shapes: Sequence[Sequence[int]]) -> tuple[tuple[int, int], ...]:
    out = []
    for shape in shapes:
        if len(shape) != 2 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
            raise UnsupportedError(f"openvino static shapes are (batch, sequence) pairs of positive integers, got {shape!r}")
        out.append((int(shape[0]), int(shape[1])))
    return tuple(dict.fromkeys(out))


def with_shapes(model: LeanModel, shapes: Sequence[Sequence[int]]) -> LeanModel:
    """A copy of an OpenVINO model that also compiles static (batch, sequence) shapes.

    OpenVINO's CPU plugin plans memory and picks kernels once for a static shape; on MiniLM at
    batch 32 x 128 that measured ~10% faster than the dynamic-shape graph. Inputs of exactly a
    listed shape (e.g. the benchmark's, or a server's fixed padding) use the static graph, any
    other shape the dynamic one. Recorded in extra.runtime.shapes, so loading recompiles them.

    Example:
        >>> fast = with_shapes(convert(m, "openvino", "bf16"), [(1, 128), (32, 128)])
    """
    if not isinstance(model.runner, OvRunner):
        raise UnsupportedError(f"static shapes are an OpenVINO setting; this model runs on {model.backend}")
    r = model.runner
    shapes = _check_shapes(shapes)
    runner = OvRunner(r.source, copy.deepcopy(r.config), r.requested_precision, r.hint, r.threads, shapes, r.sparse_rate,
                      r.outputs)
    record = copy.deepcopy(model.record)
    record.extra["runtime"] = {**record.extra.get("runtime", {}), "shapes": [list(s) for s in shapes]}
    out = LeanModel(None, model.tokenizer, record, runner=runner)
    out.path = model.path
    return out


def ov_model(source: GraphSource | IrSource, model: LeanModel, info: dict[str, Any], precision: str = "fp32",
             hint: str = "latency") -> LeanModel:
    """A LeanModel running `source` on OpenVINO, with `model`'s tokenizer and a copy of its record."""
    config = getattr(model.module, "config", None) or getattr(model.runner, "config", None)
    runner = OvRunner(source, copy.deepcopy(config), precision, hint, outputs=output_count(model.task))
    record = copy.deepcopy(model.record)
    record.backend = "openvino"
    record.weights = IR_FILE if isinstance(source, IrSource) else ONNX_FILE
    record.extra["runtime"] = {"backend": "openvino", **info, "precision": precision, "hint": hint}
    if runner.precision != precision:
        note = f"openvino: this CPU lacks {precision}; running in {runner.precision}"
        warnings.warn(note, stacklevel=2)
        record.notes.append(note)
    return LeanModel(None, model.tokenizer, record, runner=runner)


class OpenVinoBackend:
    name = "openvino"

    def save(self, model: LeanModel, directory: Path) -> str:
        runner = model.runner
        if model.task == "causal-lm":  # stateful decoder IRs (leanlm.generate.openvino)
            from leanlm.generate.openvino import save_decoder

            return save_decoder(model, directory)
        if not isinstance(runner, OvRunner):
            raise ArtifactError(f"openvino backend cannot save a model whose runner is {type(runner).__name__}")
        src = runner.source
        if isinstance(src, IrSource):
            (directory / IR_FILE).write_bytes(src.xml)
            (directory / IR_FILE).with_suffix(".bin").write_bytes(src.weights)
            name = IR_FILE
        elif src.path is not None and src.path.suffix == ".xml":  # an IR: copy .xml and its .bin
            src.read()  # refuses a file changed since loading
            shutil.copyfile(src.path, directory / IR_FILE)
            shutil.copyfile(src.path.with_suffix(".bin"), directory / Path(IR_FILE).with_suffix(".bin"))
            name = IR_FILE
        else:
            (directory / ONNX_FILE).write_bytes(src.read())
            name = ONNX_FILE
        if runner.config is not None:
            runner.config.save_pretrained(directory)
        return name

    def load(self, directory: Path, record: Record, device: str | None = None) -> LeanModel:
        if record.task == "causal-lm":
            from leanlm.generate.openvino import load_decoder

            return load_decoder(directory, record, device)
        tokenizer, config = load_parts(directory, record, device)
        path = directory / record.weights
        if path.suffix == ".xml" and not path.with_suffix(".bin").exists():
            raise ArtifactError(f"{directory} is incomplete: {path.with_suffix('.bin').name} is missing")
        rt = record.extra.get("runtime", {})
        runner = OvRunner(GraphSource(path=path), config, rt.get("precision", "fp32"), rt.get("hint", "latency"),
                          shapes=rt.get("shapes", ()), sparse_rate=rt.get("sparse_weights_rate"),
                          outputs=output_count(record.task))
        return LeanModel(None, tokenizer, record, runner=runner)


# --------------------------------------------------------------------------- sparse int8 weights
# OpenVINO's CPU plugin can store the weights of an int8 FullyConnected layer compressed (zeros
# dropped) and decompress them inside its AMX brgemm kernel, when the layer is at least `rate`
# sparse. Only AMX CPUs have that kernel; everywhere else the property is accepted and ignored.

SPARSE_RATE = "CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE"


def _check_rate(rate: float | None) -> float | None:
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < rate <= 1.0:
        raise UnsupportedError(f"openvino sparse_weights_rate must be in (0, 1], got {rate!r}")
    return float(rate)


def sparse_weights_support() -> tuple[bool, str]:
    """(whether this CPU has the AMX int8 units OpenVINO's sparse-weight kernel needs, why not)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
        amx = "amx_int8" in flags and "amx_tile" in flags
    except OSError:  # not Linux: ask torch's own CPU probe
        amx = bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    return (True, "") if amx else (False, "this CPU has no AMX int8 units")


def with_sparse_weights(model: LeanModel, rate: float = 0.5) -> LeanModel:
    """A copy of an OpenVINO model compiled with CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE = `rate`.

    int8 FullyConnected layers whose weights are at least `rate` zeros (e.g. after magnitude or
    Wanda pruning, then int8-nncf) may then run OpenVINO's sparse AMX kernel. Recorded in
    extra.runtime.sparse_weights_rate, so loading compiles it the same way. Whether the kernel
    was picked: `sparse_kernels`; whether it is faster: measure it.

    Args:
        model: a model on the openvino backend (int8 for any effect).
        rate: minimum fraction of zero weights in (0, 1] for a layer to use the sparse kernel.

    Example:
        >>> sparse = with_sparse_weights(leanlm.load("runs/minilm-pruned-nncf"), rate=0.5)
        >>> sparse_kernels(sparse)["sparse_layers"]
    """
    if not isinstance(model.runner, OvRunner):
        raise UnsupportedError(f"sparse weights are an OpenVINO setting; this model runs on {model.backend}")
    r = model.runner
    runner = OvRunner(r.source, copy.deepcopy(r.config), r.requested_precision, r.hint, r.threads, r.shapes,
                      _check_rate(rate), r.outputs)
    record = copy.deepcopy(model.record)
    record.extra["runtime"] = {**record.extra.get("runtime", {}), "sparse_weights_rate": float(rate)}
    out = LeanModel(None, model.tokenizer, record, runner=runner)
    out.path = model.path
    return out


def sparse_kernels(model: LeanModel, texts: Sequence[str] = ("A gorgeous, witty, seductive movie.",)) -> dict[str, Any]:
    """Which kernels OpenVINO's CPU plugin runs for the FullyConnected layers of `model`.

    Compiles the model's graph with its own settings plus performance counters, runs `texts`
    once, and reads each FullyConnected node's executed kernel ("brgemm_avx512_amx_sparse_*"
    when the sparse-weight kernel was selected). No timing: this says what runs, not how fast.

    Returns {"amx": bool, "rate": the compile rate or None, "fully_connected": count,
    "sparse_layers": [node names], "kernels": {kernel: count}}.
    """
    if not isinstance(model.runner, OvRunner):
        raise UnsupportedError(f"sparse_kernels reads OpenVINO's kernels; this model runs on {model.backend}")
    runner = model.runner
    amx, _ = sparse_weights_support()
    compiled = core().compile_model(runner.read(), "CPU", {**runner.props, "PERF_COUNT": True})
    request = compiled.create_infer_request()
    enc = model.tokenizer(list(texts), padding=True, truncation=True, max_length=128, return_tensors="pt")
    request.infer(to_feed(dict(enc), runner.inputs))
    kernels: dict[str, int] = {}
    sparse, count = [], 0
    for info in request.profiling_info:
        if info.node_type.startswith("FullyConnected"):
            count += 1
            kernels[info.exec_type] = kernels.get(info.exec_type, 0) + 1
            if "sparse" in info.exec_type:
                sparse.append(info.node_name)
    return {"amx": amx, "rate": runner.sparse_rate, "fully_connected": count, "sparse_layers": sparse,
            "kernels": kernels}


register_backend(OpenVinoBackend())
