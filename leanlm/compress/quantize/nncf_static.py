"""int8 static quantization by NNCF on OpenVINO's own graph: the fastest encoder path on this CPU.

The float model goes through OpenVINO's PyTorch frontend (`leanlm.runtime.openvino.torch_graph`,
verified against PyTorch), where attention is one ScaledDotProductAttention op. NNCF, OpenVINO's
compression library, then inserts int8 FakeQuantize ops where OpenVINO's CPU plugin has int8
kernels, with activation ranges from calibration texts (the task's training split), SmoothQuant on
MatMul inputs and a fast bias correction that compensates each layer's mean quantization error.
The result is an OpenVINO IR (model.xml + model.bin).

Why besides `int8-static` (ONNX QDQ from onnxruntime.quantization, run on OpenVINO or ORT): in four
runs of benchmarks/quantize.py on fine-tuned MiniLMs (batch 32 x 128, static shapes) this graph ran
1.06-1.09x int8-static's throughput, 1.13-1.31x the OpenVINO bf16 peer and 4.66-4.96x float PyTorch
eager, with every FFN projection in int8 (int8-static keeps the GELU-fed ones in float to hold
accuracy; here SmoothQuant and bias correction do that job), and a 24 MB artifact instead of 68 MB.
Accuracy vs float: -0.28, -0.47 and +0.09 points on three fine-tunes; embedding cosine 0.997.
Turning SmoothQuant off (smooth=0) was a little more accurate on the classifiers but dropped the
embedding cosine to 0.980, so it stays on.

Example:
    >>> quantize_(model, Int8Nncf(), calibration=load_splits("movie-snippets").train.texts[:256])
    >>> quantize_(model, Int8Nncf(keep_float=("encoder.layer.5.output.dense",)), calibration=texts)
"""
from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from leanlm.artifact import LeanModel
from leanlm.compress.quantize import DEFAULT_SKIP, FAMILY, QuantContext, eligible_linears
from leanlm.config import BaseConfig, check, register, transform
from leanlm.errors import ConfigError, UnsupportedError

PRESETS = ("performance", "mixed")


@register(FAMILY, "int8-nncf")
@dataclass(frozen=True)
class Int8Nncf(BaseConfig):
    """int8 weights x int8 activations on OpenVINO, quantized by NNCF (needs `leanlm[openvino]`).

    Args:
        samples: calibration texts used at most (from the context's calibration texts).
        preset: "performance": symmetric int8 activations (what the AMX/VNNI kernels take
            directly); "mixed": asymmetric activations (more accurate on one-sided inputs such as
            GELU outputs, slower).
        smooth: SmoothQuant alpha for MatMul inputs in (0, 1]; 0 turns it off. 0.95 is NNCF's
            transformer default; 0.5 cost ~1 pt accuracy on the fine-tuned MiniLM.
        fast_bias_correction: correct each quantized layer's bias for the mean shift int8 causes.
        skip: module-name parts left in float (heads by default).
        keep_float: further modules (qualified names, e.g. "encoder.layer.5.output.dense") left in float.
        precision: the precision of what stays float: "bf16" (AMX/avx512_bf16) or "fp32".
        max_drop: accuracy guard (None = off). With an evaluate probe in the context (higher is
            better, e.g. validation accuracy in points; the CLI builds one from --calibration's
            validation split), the quantized model is measured against the float one and, while
            it loses more than `max_drop`, the linear whose int8 input keeps the least signal
            (SQNR) goes back to float and NNCF quantizes again. Every step is recorded.
        max_float_layers: the guard returns at most this many layers to float (`budget_met` says
            whether the budget was reached).

    Example:
        >>> Int8Nncf(preset="mixed", samples=128)
        >>> quantize_(m, Int8Nncf(max_drop=0.5), calibration=texts, evaluate=validation_accuracy_pts)
    """

    samples: int = 256
    preset: str = "performance"
    smooth: float = 0.95
    fast_bias_correction: bool = True
    skip: tuple[str, ...] = DEFAULT_SKIP
    keep_float: tuple[str, ...] = ()
    precision: str = "bf16"
    max_drop: Optional[float] = None
    max_float_layers: int = 6

    def validate(self) -> None:
        check(isinstance(self.samples, int) and self.samples >= 8,
              f"int8-nncf: samples must be an integer >= 8, got {self.samples!r}")
        check(self.preset in PRESETS, f"int8-nncf: preset must be one of {PRESETS}, got {self.preset!r}")
        check(isinstance(self.smooth, (int, float)) and 0.0 <= self.smooth <= 1.0,
              f"int8-nncf: smooth must be in [0, 1], got {self.smooth!r}")
        check(all(isinstance(n, str) and n for n in self.keep_float), "int8-nncf: keep_float must be module names")
        check(self.precision in ("bf16", "fp32"), f"int8-nncf: precision must be 'bf16' or 'fp32', got {self.precision!r}")
        check(self.max_drop is None or (isinstance(self.max_drop, (int, float)) and self.max_drop >= 0),
              f"int8-nncf: max_drop must be None or >= 0, got {self.max_drop!r}")
        check(isinstance(self.max_float_layers, int) and self.max_float_layers >= 0,
              f"int8-nncf: max_float_layers must be an integer >= 0, got {self.max_float_layers!r}")


def require_nncf() -> Any:
    """Import nncf (quietly: it logs its version banner and backend notes at INFO), or say what to install."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import nncf
    except ImportError:
        raise UnsupportedError("int8-nncf needs NNCF: pip install 'leanlm[openvino]'") from None
    logging.getLogger("nncf").setLevel(logging.WARNING)
    return nncf


def module_pattern(names: Sequence[str], parts: Sequence[str]) -> list[str]:
    """NNCF ignored-scope regexes for the frontend's node names ("__module.encoder.layer.0.output.dense/aten::linear/MatMul").

    `names`: whole qualified module names; `parts`: module-name parts (any module with that part).
    """
    out = [rf"__module\.{re.escape(n)}/.*" for n in names]
    if parts:
        alt = "|".join(re.escape(p) for p in parts)
        out.append(rf"__module\.(.*\.)?({alt})(\..*)?/.*")
    return out


_LAYOUT_OPS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze")


def _int8_matmuls(graph: Any) -> set[str]:
    """Names of the MatMuls whose activation input NNCF quantized (a FakeQuantize feeds them,
    possibly through layout ops such as the Reshape after attention)."""
    def quantized(node: Any) -> bool:
        while node.get_type_name() in _LAYOUT_OPS:
            node = node.input_value(0).get_node()
        return node.get_type_name() == "FakeQuantize"

    return {op.get_friendly_name() for op in graph.get_ops() if op.get_type_name() == "MatMul"
            and any(quantized(op.input_value(i).get_node()) for i in range(op.get_input_size()))}


def _quantize(graph: Any, feeds: list[dict], config: Int8Nncf, keep_float: Sequence[str]) -> Any:
    """NNCF's post-training quantization of `graph` with `keep_float` (and config.skip) left in float."""
    nncf = require_nncf()
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    ignored = nncf.IgnoredScope(patterns=module_pattern(keep_float, config.skip), validate=False)
    advanced = AdvancedQuantizationParameters(
        smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=config.smooth if config.smooth > 0 else -1))
    preset = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}[config.preset]
    # NNCF draws its progress bars on stdout; keep stdout for leanlm's results (tables, JSON)
    with contextlib.redirect_stdout(sys.stderr):
        return nncf.quantize(graph, nncf.Dataset(feeds), preset=preset, subset_size=len(feeds),
                             fast_bias_correction=config.fast_bias_correction, model_type=nncf.ModelType.TRANSFORMER,
                             ignored_scope=ignored, advanced_parameters=advanced)


def _least_robust_first(model: LeanModel, linears: dict, batches: list[dict], config: Int8Nncf) -> list[str]:
    """Eligible linears ordered by the SQNR of their (smoothed) int8 input, worst first (int8-static's scoring)."""
    from leanlm.compress.quantize.int8_static import Int8Static, _plan

    _, sqnr = _plan(model.module, linears, batches, Int8Static(smooth=config.smooth))
    return sorted(sqnr, key=sqnr.get)


@transform(Int8Nncf)
def _apply(model: LeanModel, config: Int8Nncf, ctx: QuantContext) -> dict:
    texts = ctx.require_calibration("int8-nncf")[: config.samples]
    require_nncf()
    if config.max_drop is not None and ctx.evaluate is None:
        raise ConfigError("int8-nncf: max_drop needs an evaluate probe (QuantContext(evaluate=...); on the command "
                          "line, --calibration with a labelled dataset, whose validation split is used)")
    from leanlm.compress.quantize.int8_static import _batches
    from leanlm.runtime.convert import adopt
    from leanlm.runtime.onnx_export import input_names
    from leanlm.runtime.openvino import IrSource, ov_model, torch_graph

    linears = eligible_linears(model.module, config.skip)
    if not linears:
        raise UnsupportedError("int8-nncf: the model has no eligible linear layers")
    unknown = [n for n in config.keep_float if n not in linears]
    if unknown:
        raise UnsupportedError(f"int8-nncf: keep_float names no eligible linear layer: {unknown[:3]} "
                               f"(e.g. {next(iter(linears))})")
    graph = torch_graph(model)  # its inputs are input_names(model)
    # numpy batches for NNCF's statistics and the guard's SQNR scoring alike; sorted by length so
    # padding stays out of the statistics
    feeds = _batches(model, sorted(texts, key=len), input_names(model), ctx.batch_size, ctx.max_length)
    keep = list(config.keep_float)
    build = lambda q: ov_model(IrSource.from_model(q), model, {"graph": "openvino-pytorch-frontend"},  # noqa: E731
                               precision=config.precision)
    quantized = _quantize(graph, feeds, config, keep)
    guard: dict[str, Any] = {}
    if config.max_drop is not None:
        assert ctx.evaluate is not None
        reference = float(ctx.evaluate(model))
        steps = [{"float_layers": list(keep), "score": float(ctx.evaluate(build(quantized)))}]
        order = [n for n in _least_robust_first(model, linears, feeds, config) if n not in keep]
        while reference - steps[-1]["score"] > config.max_drop and order and \
                len(keep) - len(config.keep_float) < config.max_float_layers:
            keep.append(order.pop(0))
            quantized = _quantize(graph, feeds, config, keep)
            steps.append({"float_layers": list(keep), "score": float(ctx.evaluate(build(quantized)))})
        guard = {"reference_score": reference, "steps": steps,
                 "budget_met": reference - steps[-1]["score"] <= config.max_drop}
    fq = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
    int8 = _int8_matmuls(quantized)
    int8_linears = sorted(n for n in linears if any(name.startswith(f"__module.{n}/") for name in int8))
    adopt(model, build(quantized))
    return {"calibration_texts": len(texts), "fake_quantize_ops": fq, "int8_linears": len(int8_linears),
            "float_linears": sorted(set(linears) - set(int8_linears)), **({"accuracy_guard": guard} if guard else {})}
