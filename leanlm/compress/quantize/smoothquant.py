"""SmoothQuant: W8A8 (int8 dynamic) with activation outliers migrated into the weights.

Per-token int8 activations lose precision when a few input channels are much larger than the
rest (BERT's LayerNorm outputs, post-GELU FFN inputs). SmoothQuant (Xiao et al., 2023) divides
input channel j by s_j = max|X_j|^alpha / max|W_j|^(1-alpha) and multiplies weight column j by s_j:
the product is unchanged, the activations get flatter and the weights absorb the range.

Where 1/s can be folded exactly into the op producing the input, it costs nothing at run time:
  * a norm whose output feeds only these linears (pre-norm decoders: input_layernorm -> q/k/v,
    the MLP's norm -> gate/up), checked by hooks: the linear's input must BE the norm's output;
  * the previous linear's output rows: up_proj -> down_proj (down sees act(gate) * up),
    value -> attention output projection (attention is linear in V; GQA heads share channels).
Elsewhere (post-norm BERT, where the LayerNorm output also feeds the residual) 1/s is applied to
the activation at run time through torchao's `act_pre_scale`. Each fold is verified: the
block's float output must not change, else that block falls back to run-time scaling.

Alpha is chosen per group of linears sharing one input from `alphas` (plus "no smoothing") by
the simulated int8 output error on calibration rows. Result: torchao `Int8Tensor` weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from leanlm.artifact import LeanModel
from leanlm.compress.quantize import DEFAULT_SKIP, FAMILY, QuantContext
from leanlm.compress.quantize import _calib as C
from leanlm.compress.quantize.weight_only import targets_or_raise
from leanlm.config import BaseConfig, check, register, transform

FOLD_TOLERANCE = 1e-3  # max relative change of a block's float output allowed by folding


@register(FAMILY, "smoothquant")
@dataclass(frozen=True)
class SmoothQuant(BaseConfig):
    """int8 dynamic W8A8 with SmoothQuant outlier migration (calibrated, alpha searched per layer group).

    Args:
        alpha: migration strength in [0, 1]; None searches `alphas` (and no smoothing) per group.
        alphas: the grid searched when alpha is None.
        fold: fold 1/s into the preceding norm / linear where exact (else scale at run time).
        calibration_size: number of calibration texts used.
        max_rows: calibration token rows kept per layer for the alpha search.
        skip: module-name parts left in float (heads by default).

    Example:
        >>> leanlm.quantize_(model, SmoothQuant(), calibration=texts)
    """

    alpha: float | None = None
    alphas: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
    fold: bool = True
    calibration_size: int = 64
    max_rows: int = 1024
    skip: tuple[str, ...] = DEFAULT_SKIP

    def validate(self) -> None:
        check(self.alpha is None or (isinstance(self.alpha, (int, float)) and 0 <= self.alpha <= 1),
              f"smoothquant: alpha must be in [0, 1] or None (search); got {self.alpha!r}")
        check(len(self.alphas) > 0 and all(isinstance(a, (int, float)) and 0 <= a <= 1 for a in self.alphas),
              f"smoothquant: alphas must be values in [0, 1]; got {self.alphas!r}")
        check(isinstance(self.fold, bool), "smoothquant: fold must be true or false")
        check(isinstance(self.calibration_size, int) and self.calibration_size >= 8,
              f"smoothquant: calibration_size must be >= 8; got {self.calibration_size}")
        check(isinstance(self.max_rows, int) and self.max_rows >= 64,
              f"smoothquant: max_rows must be >= 64; got {self.max_rows}")


# --------------------------------------------------------------------------- int8 simulation

def _q8_rows(t: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 fake-quantization per row (torchao: per token / per output channel)."""
    s = (t.abs().amax(1, keepdim=True) / 127.5).clamp(min=1e-12)
    return torch.clamp(torch.round(t / s), -128, 127) * s


def int8_error(X: torch.Tensor, W: torch.Tensor, s: torch.Tensor | None, ref: torch.Tensor | None = None) -> float:
    """Squared output error of int8-dynamic y = x W^T after smoothing by s (None: no smoothing)."""
    ref = X @ W.T if ref is None else ref
    if s is not None:
        X, W = X / s, W * s
    return float((_q8_rows(X) @ _q8_rows(W).T - ref).pow(2).sum())


def smooth_scales(x_max: torch.Tensor, w_max: torch.Tensor, alpha: float) -> torch.Tensor:
    s = x_max.clamp(min=1e-5).pow(alpha) / w_max.clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-5, max=1e5)


class _Stats:
    """Per-layer input channel maxima (all rows) and a capped sample of input rows."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self.amax: dict[str, torch.Tensor] = {}
        self.rows: dict[str, list[torch.Tensor]] = {}
        self.n: dict[str, int] = {}

    def __call__(self, name: str, x: torch.Tensor) -> None:
        m = x.abs().amax(0)
        self.amax[name] = torch.maximum(self.amax[name], m) if name in self.amax else m
        kept = self.n.get(name, 0)
        if kept < self.max_rows:
            take = x[: self.max_rows - kept]
            self.rows.setdefault(name, []).append(take)
            self.n[name] = kept + take.shape[0]

    def X(self, name: str) -> torch.Tensor:
        return torch.cat(self.rows[name])


# --------------------------------------------------------------------------- fold structure

@dataclass
class _Group:
    """Linears sharing one input (and one s); `source` is what 1/s is folded into, if anything."""

    members: list[str]
    source: torch.nn.Module | None = None  # a norm, or a linear whose output rows feed the members
    kind: str = "pre_scale"  # "norm" | "rows" | "heads" | "pre_scale"
    head_map: torch.Tensor | None = None  # heads: member input channel -> source output channel


def _child(module: torch.nn.Module, path: str) -> torch.nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def _norm_sources(block: torch.nn.Module, run_block, names: list[str], prefix: str) -> dict[str, tuple[str, Any]]:
    """member linear name -> (norm name, norm module) when the linear's input IS that norm's output."""
    norms = {n: m for n, m in block.named_modules() if n and "norm" in type(m).__name__.lower()
             and isinstance(getattr(m, "weight", None), torch.Tensor)}
    seen: dict[int, tuple[str, torch.Tensor]] = {}  # holding the tensors keeps their ids unique
    found: dict[str, tuple[str, Any]] = {}
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: seen.__setitem__(id(o), (n, o))) for n, m in norms.items()]
    lin_inputs: dict[str, torch.Tensor] = {}
    for name in names:
        lin = block.get_submodule(name[len(prefix):])
        handles.append(lin.register_forward_pre_hook(lambda mod, i, name=name: lin_inputs.__setitem__(name, i[0])))
    try:
        run_block()
    finally:
        for h in handles:
            h.remove()
    for name, x in lin_inputs.items():
        hit = seen.get(id(x))
        if hit is not None and hit[1] is x:
            found[name] = (hit[0], norms[hit[0]])
    return found


def _groups(model: LeanModel, block: torch.nn.Module | None, run_block, names: list[str], prefix: str,
            fold: bool) -> list[_Group]:
    if not fold or block is None:
        return [_Group([n]) for n in names]
    rel = {n[len(prefix):]: n for n in names}
    groups: list[_Group] = []
    used: set[str] = set()
    by_norm: dict[str, list[str]] = {}
    norm_mod: dict[str, torch.nn.Module] = {}
    for name, (norm_name, norm) in _norm_sources(block, run_block, names, prefix).items():
        by_norm.setdefault(norm_name, []).append(name)
        norm_mod[norm_name] = norm
    # A norm whose output also goes elsewhere (a residual, an untargeted layer) cannot take 1/s:
    # only fold when every consumer of it is a member; we cannot see all consumers, so we rely on
    # the block-output check afterwards (post-norm BERT fails it and falls back to pre-scaling).
    for norm_name, members in by_norm.items():
        groups.append(_Group(members, norm_mod[norm_name], "norm"))
        used.update(members)
    cfg = getattr(model.module, "config", None)
    for parent_path in {r.rsplit(".", 1)[0] for r in rel if "." in r}:
        parent = _child(block, parent_path)
        kids = dict(parent.named_children()) if parent is not None else {}
        pairs = []
        if {"gate_proj", "up_proj", "down_proj"} <= set(kids):  # Llama-style gated MLP
            pairs.append(("up_proj", "down_proj", "rows"))
        if {"v_proj", "o_proj"} <= set(kids) and "v_norm" not in kids:
            pairs.append(("v_proj", "o_proj", "heads"))
        for src, dst, kind in pairs:
            dst_full = rel.get(f"{parent_path}.{dst}")
            if dst_full is None or dst_full in used:
                continue
            groups.append(_Group([dst_full], kids[src], kind, _head_map(cfg, kids[dst].in_features) if kind == "heads" else None))
            used.add(dst_full)
    # BERT: attention.self.value -> attention.output.dense
    for r, full in rel.items():
        if r.endswith("attention.output.dense") and full not in used:
            value = _child(block, r[: -len("output.dense")] + "self.value")
            if isinstance(value, torch.nn.Linear):
                groups.append(_Group([full], value, "heads", _head_map(cfg, value.out_features)))
                used.add(full)
    groups.extend(_Group([n]) for n in names if n not in used)
    return groups


def _head_map(cfg: Any, width: int) -> torch.Tensor:
    """Attention output-projection input channel -> value output channel (GQA: heads share KV)."""
    heads = getattr(cfg, "num_attention_heads", 1)
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = width // heads
    c = torch.arange(width)
    return (c // head_dim) // (heads // kv) * head_dim + c % head_dim


# --------------------------------------------------------------------------- applying

def _choose(cfg: SmoothQuant, stats: _Stats, group: _Group, linears: dict[str, torch.nn.Linear]
            ) -> tuple[float | None, torch.Tensor | None]:
    """Best alpha (None = no smoothing) and s in the source's channel space, by simulated error."""
    x_max = torch.stack([stats.amax[m] for m in group.members]).amax(0)
    w_max = torch.stack([linears[m].weight.detach().abs().amax(0) for m in group.members]).amax(0)
    hm = group.head_map
    if hm is not None:  # reduce to the value channels several heads share
        n = int(hm.max()) + 1
        x_max = torch.zeros(n).scatter_reduce(0, hm, x_max, "amax")
        w_max = torch.zeros(n).scatter_reduce(0, hm, w_max, "amax")
    candidates = [cfg.alpha] if cfg.alpha is not None else [None, *cfg.alphas]
    best: tuple[float, float | None, torch.Tensor | None] | None = None
    data = []
    for m in group.members:
        X, W = stats.X(m), linears[m].weight.detach().float()
        data.append((X, W, X @ W.T))
    for alpha in candidates:
        s = smooth_scales(x_max, w_max, alpha) if alpha is not None else None
        s_in = s[hm] if (s is not None and hm is not None) else s
        err = sum(int8_error(X, W, s_in, ref) for X, W, ref in data)
        if best is None or err < best[0]:
            best = (err, alpha, s)
    return best[1], best[2]


@torch.no_grad()
def _apply_group(group: _Group, s: torch.Tensor, linears: dict[str, torch.nn.Linear]) -> torch.Tensor | None:
    """Fold 1/s into the source (if any) and s into the members; return the run-time pre-scale or None."""
    src = group.source
    if group.kind == "norm":
        src.weight.div_(s)
        if getattr(src, "bias", None) is not None:
            src.bias.div_(s)
    elif group.kind in ("rows", "heads"):
        src.weight.div_(s[:, None])
        if src.bias is not None:
            src.bias.div_(s)
    s_in = s[group.head_map] if group.head_map is not None else s
    for m in group.members:
        linears[m].weight.mul_(s_in)
    return (1.0 / s_in) if group.kind == "pre_scale" else None


@torch.no_grad()
def _fold_verified(group: _Group, s: torch.Tensor, linears: dict[str, torch.nn.Linear], run_block,
                   before: torch.Tensor | None) -> bool:
    """Fold the group; keep it only if the block's float output is unchanged (else undo, return False)."""
    if before is None:
        return False
    tensors = [group.source.weight, getattr(group.source, "bias", None)] + [linears[m].weight for m in group.members]
    saved = [(t, t.detach().clone()) for t in tensors if isinstance(t, torch.Tensor)]
    _apply_group(group, s, linears)
    after = run_block()
    if float((after - before).norm() / before.norm().clamp(min=1e-12)) <= FOLD_TOLERANCE:
        return True
    for t, v in saved:  # e.g. post-norm BERT: the LayerNorm output also feeds the residual
        t.data.copy_(v)
    return False


def _int8_weight(w: torch.Tensor, pre_scale: torch.Tensor | None) -> torch.Tensor:
    from torchao.quantization.granularity import PerRow
    from torchao.quantization.quant_primitives import MappingType
    from torchao.quantization.quantize_.workflows.int8.int8_tensor import Int8Tensor, QuantizeTensorToInt8Kwargs

    return Int8Tensor.from_hp(w, PerRow(), act_quant_kwargs=QuantizeTensorToInt8Kwargs(
        granularity=PerRow(), mapping_type=MappingType.SYMMETRIC), act_pre_scale=pre_scale)


@transform(SmoothQuant)
def _apply(model: LeanModel, config: SmoothQuant, ctx: QuantContext) -> dict:
    linears = targets_or_raise(config.name, model, config.skip)
    texts = ctx.require_calibration(config.name)[: config.calibration_size]
    batches = C.calibration_batches(model, texts, ctx.max_length, ctx.batch_size)
    chosen: dict[str, Any] = {}
    counts = {"folded": 0, "pre_scaled": 0, "unsmoothed": 0, "fold_fallbacks": 0}
    found = C.find_blocks(model.module, linears)
    block_prefix = f"{found[0]}." if found and found[0] else ""

    def process(names: list[str], stats: _Stats, run_block) -> None:
        block = prefix = None
        if run_block is not None and found is not None:
            idx = names[0][len(block_prefix):].split(".", 1)[0]
            block, prefix = found[1][int(idx)], f"{block_prefix}{idx}."
        names = [n for n in names if n in stats.amax]  # layers calibration never reached: plain int8 later
        groups = _groups(model, block, run_block, names, prefix or "", config.fold)
        before = run_block().clone() if block is not None else None
        pre: dict[str, torch.Tensor | None] = {}
        run_time: list[tuple[_Group, torch.Tensor]] = []
        for g in groups:
            alpha, s = _choose(config, stats, g, linears)
            for m in g.members:
                chosen[m] = alpha
            if s is None:
                counts["unsmoothed"] += len(g.members)
            elif g.kind == "pre_scale":
                run_time.append((g, s))
            elif _fold_verified(g, s, linears, run_block, before):
                counts["folded"] += len(g.members)
            else:
                counts["fold_fallbacks"] += 1
                run_time.append((_Group(g.members, head_map=g.head_map), s))
        # run-time scaling changes the float block's output until act_pre_scale is attached, so
        # it goes after every fold has been verified against the unchanged block
        for g, s in run_time:
            p = _apply_group(g, s, linears)
            counts["pre_scaled"] += len(g.members)
            for m in g.members:
                pre[m] = p
        for m in names:
            lin = linears[m]
            lin.weight = torch.nn.Parameter(_int8_weight(lin.weight.detach(), pre.get(m)), requires_grad=False)

    C.walk_blocks(model, linears, batches, lambda: _Stats(config.max_rows), process)
    # linears calibration never reached: plain int8 dynamic
    for name, lin in linears.items():
        if type(lin.weight) in (torch.Tensor, torch.nn.Parameter):
            lin.weight = torch.nn.Parameter(_int8_weight(lin.weight.detach(), None), requires_grad=False)
    hist: dict[str, int] = {}
    for a in chosen.values():
        hist[str(a) if a is not None else "none"] = hist.get(str(a) if a is not None else "none", 0) + 1
    return {"layers": len(linears), "calibration_texts": len(texts), "alpha": hist, **counts,
            "alphas": {k: v for k, v in chosen.items()}}
