"""Export encoders to ONNX, check the graph, and (optionally) fuse it for ONNX Runtime.

Why the legacy TorchScript exporter: with `attn_implementation="eager"` its graph is the one
ONNX Runtime's transformer optimizer recognises, so attention, embedding+LayerNorm, skip+LayerNorm
and bias+GELU fuse (measured on MiniLM-L6: 6 Attention, 1 EmbedLayerNormalization, 12
SkipLayerNormalization, 6 BiasGelu). The torch.export-based exporter (`exporter="dynamo"`) gives a
valid graph too, but the optimizer fuses no attention in it, and exporting takes ~5x longer. The
TorchScript exporter is deprecated in torch; if a future torch drops it, "auto" falls back to dynamo.

Every export is verified: `onnx.checker`, then ONNX Runtime is run on inputs of a different batch
size and length than the traced ones and compared with PyTorch; a mismatch raises ArtifactError
instead of leaving a silently wrong graph.

Example:
    >>> m = leanlm.load("minilm-l6")
    >>> path = export_onnx(m, "minilm.onnx")               # dynamic batch and sequence axes
    >>> fused = optimize_onnx(path, m)                      # ORT-fused graph (contrib ops)
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from leanlm.artifact import LeanModel, primary_output, span_logits
from leanlm.errors import ArtifactError, UnsupportedError

ENCODER_TASKS = ("sequence-classification", "feature-extraction", "question-answering")
# graph outputs per task, in order; runtimes return a tuple when a task has several
OUTPUT_NAMES = {"sequence-classification": ("logits",), "feature-extraction": ("last_hidden_state",),
                "question-answering": ("start_logits", "end_logits")}
DEFAULT_OPSET = 17
# config.model_type -> ORT transformer optimizer model_type (encoders whose fusions it knows)
_ORT_MODEL_TYPES = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "electra": "bert",
                    "distilbert": "bert", "camembert": "bert", "mpnet": "bert"}
_CHECK_TEXTS = (
    "A gorgeous, witty, seductive movie.",
    "The plot is a mess, the acting is worse, and the whole thing lasts far too long for what it says.",
    "Fine.",
)


def require_onnx() -> Any:
    """Import onnx, or say what to install."""
    try:
        import onnx
    except ImportError:
        raise UnsupportedError("ONNX export needs the onnx package: pip install 'leanlm[onnx]'") from None
    return onnx


def require_ort() -> Any:
    """Import onnxruntime (the one place leanlm does), or say what to install."""
    try:
        import onnxruntime
    except ImportError:
        raise UnsupportedError("the onnxruntime backend needs onnxruntime: pip install 'leanlm[onnx]'") from None
    return onnxruntime


def input_names(model: LeanModel) -> list[str]:
    """Tokenizer outputs the model's forward accepts, in the tokenizer's order."""
    module = model.module
    params = inspect.signature(module.forward).parameters
    names = [n for n in getattr(model.tokenizer, "model_input_names", ["input_ids", "attention_mask"]) if n in params]
    if "input_ids" not in names:
        raise UnsupportedError("ONNX export needs a model whose forward takes input_ids")
    return names


def task_outputs(task: str, out: Any) -> tuple[torch.Tensor, ...]:
    """A PyTorch output as the task's graph outputs (OUTPUT_NAMES order)."""
    return span_logits(out) if task == "question-answering" else (primary_output(out),)


class _Wrapped(torch.nn.Module):
    """Positional inputs -> the task's output tensors (the exporters want plain tensors)."""

    def __init__(self, module: torch.nn.Module, names: Sequence[str], task: str):
        super().__init__()
        self.module = module
        self.names = list(names)
        self.task = task

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return task_outputs(self.task, self.module(**dict(zip(self.names, args)), return_dict=True))


def _eager_copy(model: LeanModel) -> torch.nn.Module:
    """A float32 copy of the module with eager attention (sdpa exports to a graph ORT cannot fuse)."""
    module = model.module
    if not isinstance(module, torch.nn.Module):
        raise UnsupportedError(f"ONNX export needs a PyTorch model; this one runs on {model.backend}")
    from leanlm.runtime.torch_eager import _is_plain

    if not _is_plain(module):
        raise UnsupportedError("ONNX export needs float weights; this model's layers were replaced by a "
                               "PyTorch technique (quantize for ONNX with backend='onnxruntime' instead)")
    module = copy.deepcopy(module).float().eval().cpu()
    if hasattr(module, "set_attn_implementation"):
        try:
            module.set_attn_implementation("eager")
        except (ValueError, AttributeError):  # models without a choice keep theirs
            pass
    else:  # older transformers
        module.config._attn_implementation = "eager"
    return module


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """The exporters warn about tracing and deprecation on every call; none is actionable here."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _sample(model: LeanModel, texts: Sequence[str], names: Sequence[str], max_length: int = 64) -> dict[str, torch.Tensor]:
    enc = model.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {k: enc[k] for k in names}


def export_onnx(model: LeanModel, path: str | os.PathLike, opset: int = DEFAULT_OPSET, exporter: str = "auto",
                check: bool = True) -> Path:
    """Export an encoder to ONNX with dynamic batch and sequence axes; verify it; return the path.

    Args:
        model: a float PyTorch encoder (sequence-classification -> `logits`,
            feature-extraction -> `last_hidden_state`, question-answering -> `start_logits`, `end_logits`).
        path: the .onnx file to write (parent directories are created).
        opset: ONNX opset, 17 or newer (LayerNormalization is a single op from 17).
        exporter: "torchscript" (fusable by ONNX Runtime), "dynamo", or "auto" (torchscript,
            falling back to dynamo if this torch no longer has it).
        check: run onnx.checker and compare ONNX Runtime with PyTorch on unseen shapes.

    Example:
        >>> export_onnx(leanlm.load("minilm-l6"), "out/minilm.onnx")
    """
    return _export(model, path, opset, exporter, check)[0]


def _export(model: LeanModel, path: str | os.PathLike, opset: int, exporter: str, check: bool) -> tuple[Path, str]:
    """export_onnx, also returning which exporter produced the graph."""
    if model.task not in ENCODER_TASKS:
        raise UnsupportedError(f"ONNX export supports encoders ({', '.join(ENCODER_TASKS)}); this model is {model.task}")
    if opset < 17:
        raise UnsupportedError(f"opset must be >= 17, got {opset}")
    if exporter not in ("auto", "torchscript", "dynamo"):
        raise UnsupportedError(f"exporter must be 'auto', 'torchscript' or 'dynamo', got {exporter!r}")
    onnx = require_onnx()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = input_names(model)
    module = _eager_copy(model)
    wrapped = _Wrapped(module, names, model.task).eval()
    # Trace on a padded batch so the attention-mask path is part of the graph.
    sample = _sample(model, _CHECK_TEXTS[:2], names)
    out_names = OUTPUT_NAMES[model.task]
    used = exporter
    with _quiet_export(), torch.no_grad():
        if exporter in ("auto", "torchscript"):
            try:
                _export_torchscript(wrapped, sample, names, out_names, path, opset)
                used = "torchscript"
            except (ImportError, AttributeError, TypeError) as e:
                if exporter == "torchscript":
                    raise UnsupportedError(f"the TorchScript ONNX exporter failed: {e}") from e
                used = "dynamo"
        if used == "dynamo":
            _export_dynamo(wrapped, sample, names, out_names, path, opset)
    try:
        onnx.checker.check_model(str(path))
    except Exception as e:  # onnx raises its own ValidationError types
        raise ArtifactError(f"exported graph fails onnx.checker: {str(e).splitlines()[0]}") from e
    if check:
        verify_onnx(path, model, module=module)
    return path, used


def _export_torchscript(wrapped: torch.nn.Module, sample: dict, names: list[str], out_names: Sequence[str],
                        path: Path, opset: int) -> None:
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    for out in out_names:  # (B, labels) for logits; (B, T, ...) for per-token outputs
        axes[out] = {0: "batch"} if out == "logits" else {0: "batch", 1: "sequence"}
    torch.onnx.export(wrapped, tuple(sample[n] for n in names), str(path), input_names=names,
                      output_names=list(out_names), dynamic_axes=axes, opset_version=opset, do_constant_folding=True,
                      dynamo=False)


def _export_dynamo(wrapped: torch.nn.Module, sample: dict, names: list[str], out_names: Sequence[str], path: Path,
                   opset: int) -> None:
    batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("sequence", min=2)
    # forward(*args): the spec is one entry (for *args) holding one dict per input
    spec = (tuple({0: batch, 1: seq} for _ in names),)
    try:
        program = torch.onnx.export(wrapped, tuple(sample[n] for n in names), input_names=names,
                                    output_names=list(out_names), dynamic_shapes=spec, opset_version=opset,
                                    dynamo=True, verbose=False)
    except Exception as e:  # torch.export raises many internal error types
        raise UnsupportedError(f"the dynamo ONNX exporter failed: {str(e).splitlines()[0][:300]}") from e
    program.save(str(path), external_data=False)


def verify_onnx(path: str | os.PathLike | bytes, model: LeanModel, module: torch.nn.Module | None = None,
                rtol: float = 1e-3, atol: float = 1e-3) -> float:
    """Run ONNX Runtime and PyTorch on the same (unseen-shape) inputs; raise if they differ.

    Returns the largest absolute difference. Tolerance: atol + rtol * max|torch output|.
    """
    ort = require_ort()
    src = path if isinstance(path, bytes) else str(path)
    session = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    graph_inputs = {i.name for i in session.get_inputs()}
    run = lambda batch: session.run(None, {k: v.numpy() for k, v in batch.items() if k in graph_inputs})  # noqa: E731
    return compare_with_torch(model, module if module is not None else model.module, run, "ONNX graph",
                              "; export with exporter='dynamo' or report this model", rtol, atol)


def compare_with_torch(model: LeanModel, module: torch.nn.Module, run: Any, what: str, advice: str = "",
                       rtol: float = 1e-3, atol: float = 1e-3) -> float:
    """Check a converted graph, `run(batch) -> numpy outputs`, against `module` on unseen-shape inputs.

    `run` returns the graph's outputs (a list, or one array), of which the first
    `len(OUTPUT_NAMES[task])` are compared with the task's PyTorch outputs. Returns the largest
    absolute difference; raises ArtifactError naming `what` (and `advice`) when the shapes differ,
    an output is not finite, or one is off by more than atol + rtol * max|torch output|.
    """
    names = input_names(model)
    worst = 0.0
    # batch 3 x longer sequence, and batch 1 without padding: neither is the traced shape
    for texts in (_CHECK_TEXTS, _CHECK_TEXTS[2:]):
        batch = _sample(model, texts, names, max_length=128)
        with torch.no_grad():
            refs = [t.float().numpy() for t in task_outputs(model.task, module(**batch, return_dict=True))]
        outs = run(batch)
        outs = [outs] if isinstance(outs, np.ndarray) else list(outs)
        if len(outs) < len(refs):
            raise ArtifactError(f"{what}: {len(outs)} output(s), the task needs {len(refs)}")
        for got, ref in zip(outs, refs):
            got = np.asarray(got)
            if got.shape != ref.shape:
                raise ArtifactError(f"{what}: output shape {got.shape} differs from PyTorch {ref.shape}")
            diff = float(np.abs(got - ref).max())
            worst = max(worst, diff)
            if not np.isfinite(got).all() or diff > atol + rtol * float(np.abs(ref).max()):
                raise ArtifactError(f"{what} does not match PyTorch (max abs diff {diff:.3g}){advice}")
    return worst


def optimize_onnx(path: str | os.PathLike, model: LeanModel, out: str | os.PathLike | None = None,
                  check: bool = True) -> tuple[Path, dict[str, int]]:
    """Fuse attention, LayerNorm and GELU with ONNX Runtime's transformer optimizer.

    The result uses ONNX Runtime contrib ops (com.microsoft), so it runs on ONNX Runtime only;
    OpenVINO takes the plain export. Models the optimizer does not know are returned unchanged.

    Args:
        path: a plain export of `model` (from `export_onnx`).
        model: the PyTorch model it came from (its config names the heads; its outputs are the check).
        out: where to write the fused graph (default: overwrite `path`).
        check: compare ONNX Runtime with PyTorch after fusing.

    Returns (path of the fused graph, fused-op counts).
    """
    require_ort()
    if not isinstance(model.module, torch.nn.Module):
        raise UnsupportedError(f"optimize_onnx needs the PyTorch model the graph came from, not a {model.backend} one")
    cfg = model.module.config
    ort_type = _ORT_MODEL_TYPES.get(getattr(cfg, "model_type", ""))
    path = Path(path)
    out = Path(out) if out is not None else path
    if ort_type is None:
        return path, {}
    from onnxruntime.transformers.optimizer import optimize_model

    with _quiet_export(), quiet_ort_tools():
        # opt_level=0: only the python fusions; ORT applies its own graph optimizations at load.
        opt = optimize_model(str(path), model_type=ort_type, num_heads=int(cfg.num_attention_heads),
                             hidden_size=int(cfg.hidden_size), opt_level=0)
        stats = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
        opt.save_model_to_file(str(out))
    if check:
        verify_onnx(out, model)
    return out, stats


@contextlib.contextmanager
def exported(model: LeanModel, fuse: bool = False, opset: int = DEFAULT_OPSET,
             exporter: str = "auto") -> Iterator[tuple[Path, dict[str, Any]]]:
    """Export (and optionally fuse) into a temporary directory; yield (path, info for the record)."""
    with tempfile.TemporaryDirectory(prefix="leanlm-onnx-") as tmp:
        path, used = _export(model, Path(tmp) / "model.onnx", opset, exporter, check=True)
        info: dict[str, Any] = {"opset": opset, "exporter": used}
        if fuse:
            path, info["fused"] = optimize_onnx(path, model, Path(tmp) / "model.fused.onnx")
        yield path, info


@contextlib.contextmanager
def quiet_ort_tools() -> Iterator[None]:
    """ORT's python tools log every fusion at INFO/WARNING through the root-level 'onnxruntime' logger."""
    names = ("onnxruntime", "onnxruntime.transformers", "fusion", "onnx_model", "root")
    loggers = [logging.getLogger(n) for n in names] + [logging.getLogger()]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def nodes_matching(path: str | os.PathLike, parts: Sequence[str], op_types: Sequence[str] | None = None) -> list[str]:
    """Names of graph nodes whose module path has a part in `parts` ("/module/classifier/Gemm" -> classifier).

    Exported node names carry the PyTorch module path, so the same skip list that keeps
    `classifier`/`pooler` linears in float in PyTorch keeps their ONNX nodes in float.
    """
    import re

    onnx = require_onnx()
    wanted = set(parts)
    graph = onnx.load(str(path), load_external_data=False).graph
    out = []
    for node in graph.node:
        if op_types is not None and node.op_type not in op_types:
            continue
        if wanted & set(re.split(r"[/.]", node.name)):
            out.append(node.name)
    return out
