"""int8 static quantization: int8 weights and activations, activation scales fixed by calibration.

The model is exported to ONNX and `onnxruntime.quantization.quantize_static` inserts
QuantizeLinear/DequantizeLinear (QDQ) pairs whose activation ranges come from running
calibration texts (drawn from the task's training split) through the float graph. The QDQ graph
is standard ONNX, so either runtime executes it: ONNX Runtime, or OpenVINO, which turns the QDQ
pairs into int8 kernels (VNNI / AMX-int8) and runs the rest in `precision` (bf16 by default).

Calibration methods: "minmax" (observed range), "percentile" (clip the histogram's tail at
`percentile`), "entropy" (KL-divergence-optimal clipping; slowest to calibrate).

Per-tensor int8 activations break on transformer outliers, so before exporting, a float copy of
the model is prepared from the same calibration texts: SmoothQuant scales move outlier channels
of each linear layer's input into its weights (an exact rewrite), and layers whose input would
still lose too much to int8 (signal-to-noise below `min_sqnr_db`) stay in float. On MiniLM this
took the embedding cosine vs float from 0.83 (everything int8) to 0.995.

For the fastest OpenVINO model, see `int8-nncf` (NNCF on OpenVINO's own graph, fused attention, every
linear int8); this method is the portable one (a standard QDQ graph that ONNX Runtime runs too).

Example:
    >>> quantize_(model, Int8Static(range_method="percentile"),
    ...           calibration=load_splits("movie-snippets").train.texts[:256])
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

from leanlm.artifact import LeanModel
from leanlm.compress.quantize import DEFAULT_SKIP, FAMILY, QuantContext, eligible_linears
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
        range_method: how activation ranges are chosen from the calibration texts: "minmax",
            "percentile" or "entropy".
        percentile: for range_method "percentile": the percentile of |activation| kept (the rest is clipped).
        samples: calibration texts used at most (from the context's calibration texts).
        per_channel: one weight scale per output channel (False: one per tensor).
        activations: "int8" or "uint8".
        symmetric_activations: zero point at 0 (int8) / the middle (uint8). Symmetric int8 is
            what OpenVINO's AMX/VNNI kernels take directly: on this Xeon it ran ~1.7x faster
            than asymmetric uint8, which OpenVINO executes with zero-point compensation.
        op_types: ONNX op types to quantize; "MatMul" covers every linear layer (and attention's
            two activation x activation products when `attention_products`).
        attention_products: also quantize attention's Q.K^T and P.V products (activation x
            activation). Off by default: left in float, OpenVINO runs attention as its fused bf16
            kernel, which measured ~10% faster here than the int8 products, and more accurate.
        smooth: SmoothQuant migration strength alpha in [0, 1] (0 = off): each linear's input is
            divided per channel by s = max|x|^alpha / max|w|^(1 - alpha) and its weight columns
            multiplied by s (exact in float), so activation outlier channels stop setting the
            per-tensor int8 range. Exported as a Mul before the MatMul (OpenVINO runs it as part of
            the quantize step: ~2% of run time). Applied per layer group only where it raises
            the input SQNR (it helps LayerNorm outputs, not GELU outputs).
        min_sqnr_db: linears whose (smoothed) input, quantized to int8 with its calibrated range,
            keeps less than this signal-to-noise ratio stay in float (0 = quantize all). In BERT
            encoders this catches the FFN down-projections of a few layers, whose GELU outputs
            carry per-token outliers no per-channel scale can fix.
        skip: module-name parts left in float (heads by default).
        exclude_nodes: further ONNX node names left in float.
        precision: openvino only: precision of the layers left in float, "bf16" or "fp32".

    Example:
        >>> Int8Static(backend="onnxruntime", range_method="entropy", samples=64)
    """

    backend: str = "openvino"
    range_method: str = "minmax"
    percentile: float = 99.999
    samples: int = 128
    per_channel: bool = True
    activations: str = "int8"
    symmetric_activations: bool = True
    op_types: tuple[str, ...] = ("MatMul",)
    attention_products: bool = False
    smooth: float = 0.5
    min_sqnr_db: float = 25.0
    skip: tuple[str, ...] = DEFAULT_SKIP
    exclude_nodes: tuple[str, ...] = ()
    precision: str = "bf16"

    def validate(self) -> None:
        check(self.backend in BACKENDS, f"int8-static: backend must be one of {BACKENDS}, got {self.backend!r}")
        check(self.range_method in CALIBRATIONS,
              f"int8-static: range_method must be one of {CALIBRATIONS}, got {self.range_method!r}")
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
        check(isinstance(self.smooth, (int, float)) and 0.0 <= self.smooth <= 1.0,
              f"int8-static: smooth must be in [0, 1], got {self.smooth!r}")
        check(isinstance(self.min_sqnr_db, (int, float)) and 0.0 <= self.min_sqnr_db <= 60.0,
              f"int8-static: min_sqnr_db must be in [0, 60], got {self.min_sqnr_db!r}")
        check(self.precision in ("bf16", "fp32"), f"int8-static: precision must be 'bf16' or 'fp32', got {self.precision!r}")


def _batches(model: LeanModel, texts: Sequence[str], inputs: Sequence[str], batch_size: int,
             max_length: int) -> list[dict]:
    """Calibration texts tokenized into numpy int64 batches (dynamic padding per batch)."""
    out = []
    for i in range(0, len(texts), batch_size):
        enc = model.tokenizer(list(texts[i : i + batch_size]), padding=True, truncation=True,
                              max_length=max_length, return_tensors="np")
        out.append({k: enc[k].astype("int64") for k in inputs if k in enc})
    return out


def _reader(batches: list[dict]) -> Any:
    """An ONNX Runtime CalibrationDataReader over prepared batches."""
    from onnxruntime.quantization import CalibrationDataReader

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


class _Scaled(torch.nn.Module):
    """x -> linear(x * inv_scale): SmoothQuant's per-channel migration, exported as Mul -> MatMul."""

    def __init__(self, linear: torch.nn.Linear, inv_scale: torch.Tensor):
        super().__init__()
        self.linear = linear
        self.register_buffer("inv_scale", inv_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x * self.inv_scale)


@dataclass
class _Stats:
    """Per-input-channel statistics of one linear layer's input over the calibration batches."""

    amax: torch.Tensor  # (in,) max |x|
    cmin: torch.Tensor  # (in,) min x
    cmax: torch.Tensor  # (in,) max x
    group: int  # layers fed by the same tensor (q, k, v) share a group and a scale


def _run_with_input_hooks(module: torch.nn.Module, layers: dict[str, torch.nn.Module], make_hook: Any,
                          batches: list[dict]) -> None:
    """Run the calibration batches with a forward pre-hook `make_hook(name)` on each layer, then remove them."""
    handles = [layer.register_forward_pre_hook(make_hook(n)) for n, layer in layers.items()]
    try:
        for b in batches:
            module(**{k: torch.from_numpy(v) for k, v in b.items()})
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def _input_stats(module: torch.nn.Module, linears: dict[str, torch.nn.Linear], batches: list[dict]) -> dict[str, _Stats]:
    stats: dict[str, _Stats] = {}
    # q, k and v read the very same tensor one after another: group consecutive layers on one input
    last: dict[str, Any] = {"x": None, "group": -1}

    def hook(name: str) -> Any:
        def fn(_m: torch.nn.Module, inputs: tuple) -> None:
            x = inputs[0].detach().float().flatten(0, -2)  # (tokens, in)
            if name not in stats:
                if inputs[0] is not last["x"]:
                    last["group"] += 1
                stats[name] = _Stats(x.abs().amax(0), x.amin(0), x.amax(0), last["group"])
            else:
                st = stats[name]
                st.amax = torch.maximum(st.amax, x.abs().amax(0))
                st.cmin, st.cmax = torch.minimum(st.cmin, x.amin(0)), torch.maximum(st.cmax, x.amax(0))
            last["x"] = inputs[0]
        return fn

    _run_with_input_hooks(module, linears, hook, batches)
    return stats


def _groups(stats: dict[str, _Stats]) -> list[list[str]]:
    by_group: dict[int, list[str]] = {}
    for name, st in stats.items():
        by_group.setdefault(st.group, []).append(name)
    return list(by_group.values())


def _smooth_scales(linears: dict[str, torch.nn.Linear], stats: dict[str, _Stats],
                   alpha: float) -> dict[str, torch.Tensor]:
    """SmoothQuant's per-input-channel 1/s for every layer (shared within a group); nothing is changed."""
    inv: dict[str, torch.Tensor] = {}
    for names in _groups(stats):
        a = stats[names[0]].amax.clamp(min=1e-5)
        w = torch.stack([linears[n].weight.detach().abs().amax(0).float() for n in names]).amax(0).clamp(min=1e-5)
        scale = (a.pow(alpha) / w.pow(1 - alpha)).clamp(1e-4, 1e4)
        for n in names:
            inv[n] = 1.0 / scale
    return inv


def _apply_scales(module: torch.nn.Module, linears: dict[str, torch.nn.Linear], inv: dict[str, torch.Tensor]) -> None:
    """Weights x s, inputs x 1/s (an exact rewrite in float), in place."""
    for n, inv_scale in inv.items():
        lin = linears[n]
        lin.weight.data = lin.weight.data / inv_scale.to(lin.weight.dtype)
        parent_name, _, attr = n.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, _Scaled(lin, inv_scale.to(lin.weight.dtype)))


def _grid(lo: float, hi: float, symmetric: bool, signed: bool) -> tuple[float, int, float]:
    """(step, zero point, levels) of the int8 grid ORT builds for an activation range [lo, hi]."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if symmetric:
        a = max(-lo, hi, 1e-8)
        lo, hi, levels = -a, a, (254.0 if signed else 255.0)
    else:
        hi, levels = max(hi, lo + 1e-8), 255.0
    step = (hi - lo) / levels
    return step, round(-lo / step), levels


@torch.no_grad()
def _sqnr_db(module: torch.nn.Module, linears: dict[str, torch.nn.Linear], stats: dict[str, _Stats],
             variants: dict[str, dict[str, torch.Tensor]], batches: list[dict], symmetric: bool,
             signed: bool) -> dict[str, dict[str, float]]:
    """Signal-to-noise ratio (dB) of each linear's input after per-tensor int8 quantization.

    One pass over the float model scores every variant (name -> per-layer 1/s; {} = unscaled):
    a scaled input is just x * (1/s), so no rewritten model is needed. Ranges are min-max.
    """
    grids = {}
    for v, inv in variants.items():
        for n, st in stats.items():
            s = inv.get(n, torch.ones_like(st.amax))
            grids[v, n] = _grid(float((st.cmin * s).min()), float((st.cmax * s).max()), symmetric, signed)
    sig = {key: 0.0 for key in grids}
    err = {key: 0.0 for key in grids}

    def hook(name: str) -> Any:
        def fn(_m: torch.nn.Module, inputs: tuple) -> None:
            x0 = inputs[0].detach().float()
            for v, inv in variants.items():
                x = x0 * inv[name] if name in inv else x0
                step, zp, levels = grids[v, name]
                q = ((x / step).round() + zp).clamp(0, levels).sub(zp) * step
                sig[v, name] += float((x * x).sum())
                err[v, name] += float(((x - q) ** 2).sum())
        return fn

    _run_with_input_hooks(module, {n: linears[n] for n in stats}, hook, batches)
    out: dict[str, dict[str, float]] = {v: {} for v in variants}
    for (v, n) in grids:
        out[v][n] = 10 * math.log10(max(sig[v, n], 1e-30) / max(err[v, n], 1e-30))
    return out


def _plan(module: torch.nn.Module, linears: dict[str, torch.nn.Linear], batches: list[dict],
          config: "Int8Static") -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Choose SmoothQuant scales (per group, only where they raise SQNR) and score every layer."""
    stats = _input_stats(module, linears, batches)
    variants: dict[str, dict[str, torch.Tensor]] = {"plain": {}}
    if config.smooth > 0:
        variants["smooth"] = _smooth_scales(linears, stats, config.smooth)
    scores = _sqnr_db(module, linears, stats, variants, batches, config.symmetric_activations,
                      config.activations == "int8")
    inv: dict[str, torch.Tensor] = {}
    sqnr = dict(scores["plain"])
    if "smooth" in scores:
        # Smoothing helps LayerNorm outputs (outlier channels) but can hurt GELU outputs
        # (per-token outliers): keep it only for the groups whose worst layer it improves.
        for names in _groups(stats):
            if min(scores["smooth"][n] for n in names) > min(scores["plain"][n] for n in names):
                inv.update({n: variants["smooth"][n] for n in names})
                sqnr.update({n: scores["smooth"][n] for n in names})
    return inv, sqnr


def _nodes_of(module_name: str, node_names: Sequence[str]) -> list[str]:
    """Graph nodes exported from a module: names carry its scope ("/module/encoder/layer.0/output/dense/MatMul").

    The exporter joins ModuleList indices with "." and scopes with "/", so compare with both as "/".
    """
    prefix = "/module/" + module_name.replace(".", "/") + "/"
    return [n for n in node_names if n.replace(".", "/").startswith(prefix)]


@transform(Int8Static)
def _apply(model: LeanModel, config: Int8Static, ctx: QuantContext) -> dict:
    texts = ctx.require_calibration("int8-static")[: config.samples]
    from leanlm.runtime.convert import adopt
    from leanlm.runtime.onnx_export import quiet_ort_tools, exported, input_names, nodes_matching, require_onnx, require_ort
    from leanlm.runtime.onnxruntime import GraphSource

    onnx = require_onnx()
    require_ort()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[config.range_method]
    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[config.activations]
    batches = _batches(model, texts, input_names(model), ctx.batch_size, ctx.max_length)

    # Work on a float copy: smoothing rewrites layers, and the caller's model must stay intact
    # until the quantized graph is ready.
    work = LeanModel(copy.deepcopy(model.module).float().eval(), model.tokenizer, copy.deepcopy(model.record))
    linears = eligible_linears(work.module, config.skip)
    if not linears:
        raise UnsupportedError("int8-static: the model has no eligible linear layers")
    inv, sqnr = _plan(work.module, linears, batches, config)
    kept_float = sorted(n for n, db in sqnr.items() if db < config.min_sqnr_db)
    inv = {n: v for n, v in inv.items() if n not in kept_float}  # float layers need no smoothing
    _apply_scales(work.module, linears, inv)

    # ORT fusions (com.microsoft ops) are not read by OpenVINO and hide the MatMuls from the
    # QDQ quantizer, so static quantization always works on the plain export.
    with exported(work, fuse=False) as (path, info):
        graph = onnx.load(str(path), load_external_data=False).graph
        node_names = [n.name for n in graph.node]
        unknown = set(config.exclude_nodes) - set(node_names)
        if unknown:
            raise UnsupportedError(f"int8-static: exclude_nodes not in the graph: {sorted(unknown)[:3]}")
        float_nodes = set()
        for name in kept_float:
            found = _nodes_of(name, node_names)
            if not found:
                raise UnsupportedError(f"int8-static: cannot find the graph nodes of layer {name} to keep it in "
                                       "float; pass min_sqnr_db=0 to quantize every layer")
            float_nodes.update(found)
        if not config.attention_products:
            # ORT's MatMulConstBOnly is ignored in QDQ mode: exclude the activation x activation MatMuls here
            consts = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
            float_nodes.update(n.name for n in graph.node
                               if n.op_type == "MatMul" and not any(i in consts for i in n.input))
        exclude = sorted(set(nodes_matching(path, config.skip)) | set(config.exclude_nodes) | float_nodes)
        graph_inputs = {i.name for i in graph.input}
        out = path.with_name("model.qdq.onnx")
        extra: dict[str, Any] = {
            "ActivationSymmetric": config.symmetric_activations,
            "WeightSymmetric": True,
            "CalibPercentile": config.percentile,
            "CalibTensorRangeSymmetric": config.symmetric_activations,
            "CalibStridedMinMax": 1,
        }
        reader = _reader([{k: v for k, v in b.items() if k in graph_inputs} for b in batches])
        # the percentile calibrator prints its settings; keep the terminal for leanlm's own output
        with quiet_ort_tools(), contextlib.redirect_stdout(io.StringIO()):
            quantize_static(path, out, reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=list(config.op_types),
                            per_channel=config.per_channel, activation_type=qtype, weight_type=QuantType.QInt8,
                            nodes_to_exclude=exclude, calibrate_method=method, extra_options=extra)
        source = GraphSource(data=out.read_bytes())
        qnodes = sum(n.op_type == "QuantizeLinear" for n in onnx.load_from_string(source.data).graph.node)
    del work
    if config.backend == "openvino":
        from leanlm.runtime.openvino import ov_model

        converted = ov_model(source, model, info, precision=config.precision)
    else:
        from leanlm.runtime.onnxruntime import ort_model

        converted = ort_model(source, model, info)
    adopt(model, converted)
    return {"calibration_texts": len(texts), "quantize_nodes": qnodes, "excluded_nodes": len(exclude),
            "smoothed": len(inv), "kept_float": kept_float, "input_sqnr_db": {n: round(v, 1) for n, v in sqnr.items()}}
