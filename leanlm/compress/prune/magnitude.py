"""Unstructured magnitude pruning: zero the smallest weights of every eligible linear layer.

Weights are set to zero in place; every matrix keeps its size. That is the honest limit of
unstructured sparsity: a dense kernel multiplies the zeros like any other number, so the model is
neither smaller on disk nor faster on PyTorch or ONNX Runtime. `sparsity_note` says per backend
whether the zeros can turn into speed; the only CPU path is OpenVINO's sparse-weight
decompression for int8 FullyConnected layers on AMX CPUs (`leanlm.runtime.openvino.with_sparse_weights`).

The helpers here (targets, exact-count masks, achieved sparsity, the note) are shared by the other
unstructured methods, Wanda (`wanda.py`) and n:m (`semi24.py`), which differ only in their scores.

Example:
    >>> prune_(m, MagnitudePruning(0.5))                    # 50 % of each layer's weights zeroed
    >>> prune_(m, MagnitudePruning(0.6, scope="global"))    # one threshold over all layers
    >>> print(sparsity_note(m, "openvino"))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from leanlm.artifact import LeanModel
from leanlm.compress.prune import FAMILY, PruneContext
from leanlm.compress.quantize import DEFAULT_SKIP, eligible_linears
from leanlm.config import BaseConfig, check, register, transform
from leanlm.errors import UnsupportedError

SCOPES = ("layer", "global")


@register(FAMILY, "magnitude")
@dataclass(frozen=True)
class MagnitudePruning(BaseConfig):
    """Zero the smallest-magnitude weights of each linear layer (unstructured; no speed on dense kernels).

    Args:
        sparsity: fraction of weights set to zero, in (0, 1).
        scope: "layer": every layer loses exactly `sparsity` of its weights; "global": one
            magnitude threshold over all target layers (layers with small weights lose more).
        skip: module-name parts left dense (heads by default: tiny, and sensitive).

    Example:
        >>> prune_(m, MagnitudePruning(sparsity=0.5, scope="global"))
    """

    sparsity: float = 0.5
    scope: str = "layer"
    skip: tuple[str, ...] = DEFAULT_SKIP

    def validate(self) -> None:
        check_sparsity("magnitude", self.sparsity)
        check(self.scope in SCOPES, f"magnitude: scope must be one of {SCOPES}, got {self.scope!r}")


def check_sparsity(method: str, sparsity: Any) -> None:
    check(isinstance(sparsity, (int, float)) and not isinstance(sparsity, bool) and 0.0 < sparsity < 1.0,
          f"{method}: sparsity must be in (0, 1), got {sparsity!r}")


def sparse_targets(model: LeanModel, skip: tuple[str, ...], method: str) -> dict[str, torch.nn.Linear]:
    """The eligible float linears of `model`, or UnsupportedError if there are none."""
    linears = eligible_linears(model.module, skip)
    if not linears:
        raise UnsupportedError(f"{method}: the model has no eligible linear layers")
    return linears


def smallest_mask(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean mask of exactly `count` lowest scores along the last dim (ties broken by position).

    A threshold (`scores <= kth`) would prune every tied weight, overshooting the requested
    sparsity on quantized-looking or already-pruned weights; indices keep the count exact.
    """
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if count > 0:
        idx = torch.topk(scores, count, dim=-1, largest=False, sorted=False).indices
        mask.scatter_(-1, idx, True)
    return mask


@torch.no_grad()
def zero_(layer: torch.nn.Linear, mask: torch.Tensor) -> None:
    layer.weight.masked_fill_(mask.view_as(layer.weight), 0.0)


def achieved(linears: dict[str, torch.nn.Linear]) -> dict[str, Any]:
    """Per-layer and overall fraction of zero weights (what the extra in leanlm.json records)."""
    per = {n: round(float((m.weight == 0).float().mean()), 4) for n, m in linears.items()}
    zeros = sum(int((m.weight == 0).sum()) for m in linears.values())
    total = sum(m.weight.numel() for m in linears.values())
    return {"sparsity": per, "overall_sparsity": round(zeros / max(total, 1), 4), "layers": len(per)}


# --------------------------------------------------------------------------- speed, honestly


def _sparse_stats(model: LeanModel) -> tuple[float, bool]:
    """(overall sparsity, whether it is n:m) from the record of the last unstructured prune."""
    for t in reversed(model.record.techniques):
        info = model.record.extra.get(t.get("type", ""), {})
        if "overall_sparsity" in info:
            return float(info["overall_sparsity"]), bool(info.get("pattern"))
    return 0.0, False


def _note_dense(runtime: str) -> Callable[[float, bool, LeanModel], str]:
    def note(sparsity: float, nm: bool, model: LeanModel) -> str:
        extra = (" PyTorch's 2:4 semi-structured kernels (to_sparse_semi_structured) need a CUDA GPU; "
                 "there are none for CPU." if nm and runtime.startswith("PyTorch") else "")
        return (f"{sparsity:.0%} of the weights are zero, but {runtime} runs dense kernels that multiply zeros "
                f"like any other weight: no faster and no smaller on disk.{extra} Structured pruning "
                f"(heads, ffn, layers) or quantization make it faster.")
    return note


def _note_openvino(sparsity: float, nm: bool, model: LeanModel) -> str:
    from leanlm.runtime.openvino import sparse_weights_support

    ok, why = sparse_weights_support()
    int8 = any(t.get("type") in ("int8-nncf", "int8-static") for t in model.record.techniques)
    if not ok:
        return (f"{sparsity:.0%} of the weights are zero, but OpenVINO's sparse-weight kernels cannot run here "
                f"({why}): dense kernels, no speed-up.")
    if not int8:
        return (f"{sparsity:.0%} of the weights are zero; OpenVINO's CPU plugin only skips zeros in int8 "
                "FullyConnected layers: quantize (int8-nncf), then compile with with_sparse_weights(model, rate).")
    return (f"{sparsity:.0%} of the weights are zero and this CPU has AMX: compile with "
            "with_sparse_weights(model, rate) so OpenVINO may pick its sparse int8 kernel; "
            "sparse_kernels(model) says which layers got it. Measure before claiming a speed-up.")


_NOTES: dict[str, Callable[[float, bool, LeanModel], str]] = {
    "torch": _note_dense("PyTorch"),
    "torch-compile": _note_dense("PyTorch (compiled)"),
    "onnxruntime": _note_dense("ONNX Runtime"),
    "openvino": _note_openvino,
}


def sparsity_note(model: LeanModel, backend: str | None = None) -> str:
    """One plain sentence: will this model's zero weights make it faster on `backend`?

    Args:
        model: a model pruned by magnitude, wanda or n:m (any backend).
        backend: "torch", "torch-compile", "onnxruntime" or "openvino"; default: the model's own.

    Example:
        >>> print(sparsity_note(pruned, "onnxruntime"))
    """
    sparsity, nm = _sparse_stats(model)
    if sparsity == 0.0:
        return "no unstructured sparsity recorded for this model"
    return speed_note(model, backend or model.backend, sparsity, nm)


def speed_note(model: LeanModel, backend: str, sparsity: float, nm: bool) -> str:
    note = _NOTES.get(backend)
    if note is None:
        return f"{sparsity:.0%} of the weights are zero; leanlm knows no sparse kernels on {backend}"
    return note(sparsity, nm, model)


def finish(model: LeanModel, linears: dict[str, torch.nn.Linear], pattern: str | None = None) -> dict[str, Any]:
    """The transform's extra: achieved sparsity per layer (and the n:m pattern), plus the plain
    speed note for PyTorch, so any command that prints the extra says it."""
    out = achieved(linears)
    if pattern:
        out["pattern"] = pattern
    out["speed"] = speed_note(model, "torch", out["overall_sparsity"], bool(pattern))
    return out


@transform(MagnitudePruning)
def _apply(model: LeanModel, config: MagnitudePruning, ctx: PruneContext) -> dict:
    linears = sparse_targets(model, config.skip, "magnitude")
    if config.scope == "layer":
        for layer in linears.values():
            scores = layer.weight.detach().abs().flatten()
            zero_(layer, smallest_mask(scores, int(scores.numel() * config.sparsity)))
    else:
        scores = torch.cat([m.weight.detach().abs().flatten() for m in linears.values()])
        mask = smallest_mask(scores, int(scores.numel() * config.sparsity))
        for part, layer in zip(mask.split([m.weight.numel() for m in linears.values()]), linears.values()):
            zero_(layer, part)
    return finish(model, linears)
