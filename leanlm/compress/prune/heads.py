"""Attention-head pruning: remove the least important heads, physically (smaller Q/K/V/O matrices).

Each removed head takes its rows of the query/key/value projections and its columns of the
output projection with it, so every backend (PyTorch, ONNX Runtime, OpenVINO, the fast decoder,
GGUF) runs a smaller model. Grouped-query decoders lose whole KV groups (a KV head with the query
heads that read it), so `ratio` is still the fraction of query heads removed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from leanlm.artifact import LeanModel
from leanlm.compress.prune import FAMILY, PruneContext
from leanlm.compress.prune._importance import (Block, blocks, ceil_div, importance, input_grams, keep_cols, keep_rows,
                                               param_count, refit, select, unit_rows, validate_common)
from leanlm.config import BaseConfig, check, register, transform
from leanlm.errors import ConfigError


def _pairs(heads: Any) -> tuple[tuple[int, int], ...] | None:
    """{layer: [heads]}, "0:1,0:3" or [(layer, head), ...] -> sorted ((layer, head), ...)."""
    if heads is None:
        return None
    if isinstance(heads, str):
        try:
            items = [tuple(int(x) for x in part.split(":")) for part in heads.replace(";", ",").split(",") if part.strip()]
        except ValueError:
            raise ConfigError(f"heads: expected 'layer:head,layer:head', got {heads!r}") from None
    elif isinstance(heads, dict):
        items = [(int(layer), int(h)) for layer, hs in heads.items() for h in hs]
    else:
        items = [tuple(int(x) for x in pair) for pair in heads]
    if any(len(p) != 2 for p in items):
        raise ConfigError(f"heads: expected (layer, head) pairs, got {heads!r}")
    return tuple(sorted(set(items)))  # type: ignore[arg-type]


@register(FAMILY, "heads")
@dataclass(frozen=True)
class HeadPruning(BaseConfig):
    """Remove attention heads (the least important on task data, or the ones you name).

    Args:
        ratio: fraction of heads removed (0 < ratio < 1), ignored when `heads` is given.
        scope: "global" ranks heads across all layers (layers lose different numbers);
            "layer" removes the same fraction from every layer.
        min_heads: heads every layer keeps (>= 1; to remove a whole layer use LayerDrop).
        score: "fisher" (squared mask gradients of the task loss, Michel et al. 2019),
            "taylor" (|mask gradient|) or "magnitude" (weight norms; needs no data).
        heads: explicit heads to remove instead of a ranking: {layer: [head, ...]} or
            "layer:head,layer:head" (indices of the model as it is now).
        rescale: refit the output projection's kept columns by least squares on calibration
            activations (Kwon et al. 2022), a retraining-free recovery.

    Example:
        >>> prune_(model, HeadPruning(0.4), calibration=texts, labels=labels)
        >>> prune_(model, HeadPruning(heads={0: [1, 3]}))
    """

    ratio: float = 0.4
    scope: str = "global"
    min_heads: int = 1
    score: str = "fisher"
    heads: Any = None
    rescale: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", _pairs(self.heads))
        super().__post_init__()

    def validate(self) -> None:
        validate_common(self, "heads")
        check(self.min_heads >= 1, f"heads: min_heads must be >= 1 (use LayerDrop to remove a layer), got {self.min_heads}")
        check(self.heads is None or all(l >= 0 and h >= 0 for l, h in self.heads), "heads: indices must be >= 0")


def _named(bs: list[Block], pairs: tuple[tuple[int, int], ...]) -> list[torch.Tensor]:
    """KV groups to keep per layer when removing exactly the named query heads."""
    removed: dict[int, set[int]] = {}
    for layer, head in pairs:
        if layer >= len(bs) or head >= bs[layer].heads:
            raise ConfigError(f"heads: layer {layer} head {head} does not exist "
                              f"({len(bs)} layers of {bs[min(layer, len(bs) - 1)].heads} heads)")
        removed.setdefault(layer, set()).add(head)
    keep = []
    for i, b in enumerate(bs):
        gone = removed.get(i, set())
        units = {h // b.group for h in gone}
        if any(set(range(u * b.group, (u + 1) * b.group)) - gone for u in units):
            raise ConfigError(f"heads: layer {i} shares each KV head among {b.group} query heads; "
                              f"remove whole groups (heads {b.group}k .. {b.group}k+{b.group - 1})")
        if len(units) == b.units:
            raise ConfigError(f"heads: removing every head of layer {i} leaves it no attention; use LayerDrop "
                              f"to remove the layer")
        keep.append(torch.tensor(sorted(set(range(b.units)) - units), dtype=torch.long))
    return keep


def set_head_attrs(attn: torch.nn.Module, heads: int, kv_heads: int, head_dim: int) -> None:
    """Update the head-count attributes this attention module has (forward passes read them)."""
    values = {"num_attention_heads": heads, "num_heads": heads, "all_head_size": heads * head_dim,
              "num_key_value_heads": kv_heads}
    for attr, value in values.items():
        if isinstance(getattr(attn, attr, None), int):
            setattr(attn, attr, value)


@transform(HeadPruning)
def _apply(model: LeanModel, config: HeadPruning, ctx: PruneContext) -> dict:
    bs = blocks(model.module)
    params = param_count(model.module)
    before = [b.heads for b in bs]
    if config.heads is not None:
        keep = _named(bs, config.heads)
    else:
        scores = importance(model, ctx, config.score, "heads").heads
        units = [s.reshape(b.units, b.group).sum(1) for s, b in zip(scores, bs)]
        keep = select(units, config.ratio, config.scope, ceil_div(config.min_heads, bs[0].group), what="KV groups")
    grams = input_grams(model, [b.out for b in bs], ctx, "heads") if config.rescale else None
    removed: dict[str, list[int]] = {}
    lo = bs[0].layout
    for i, (b, kept) in enumerate(zip(bs, keep)):
        d, g = b.head_dim, b.group
        if len(kept) == b.units:
            continue
        q_rows, kv_rows = unit_rows(kept, g * d), unit_rows(kept, d)
        removed[str(i)] = sorted(set(range(b.heads)) - set(unit_rows(kept, g).tolist()))
        keep_rows(b, lo.qkv[0], q_rows)
        keep_rows(b, lo.qkv[1], kv_rows)
        keep_rows(b, lo.qkv[2], kv_rows)
        weight = refit(b.out.weight, grams[i], q_rows) if grams is not None else None
        keep_cols(b, lo.out, q_rows, weight)
        set_head_attrs(b.attn, len(kept) * g, len(kept), d)
    return {"removed": removed, "heads_before": before, "heads_after": [b.heads for b in bs],
            "params_before": params, "params_after": param_count(model.module)}
