"""Layer dropping: remove whole transformer layers (a 6-layer MiniLM becomes a 3-layer student).

The layer list is rebuilt, `config.num_hidden_layers` (and `config.layer_types`, where present)
follow, and decoder `layer_idx` attributes are renumbered so KV caches index the right slot.
Which layers go: the ones named (`keep`), every other one ("even", as DistilBERT initialises
its student), or greedily the one whose removal raises the task loss on calibration data least
("importance"), one at a time.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

from torch import nn

from leanlm.artifact import LeanModel
from leanlm.compress.prune import FAMILY, PruneContext
from leanlm.compress.prune._importance import Objective, find_layers, param_count
from leanlm.config import BaseConfig, check, register, transform
from leanlm.errors import ConfigError

STRATEGIES = ("importance", "even")


@register(FAMILY, "layers")
@dataclass(frozen=True)
class LayerDrop(BaseConfig):
    """Remove whole layers: the ones not in `keep`, or `count` / `ratio` of them by a strategy.

    Args:
        keep: indices of the layers to keep (in order); or leave empty and give count / ratio.
        count: number of layers removed.
        ratio: fraction of layers removed (0 < ratio < 1), rounded to whole layers.
        strategy: "importance" (greedily drop the layer whose absence raises the calibration
            task loss least; needs calibration texts) or "even" (keep evenly spaced layers
            0, 2, 4, ...: DistilBERT-style, needs no data).

    Example:
        >>> prune_(model, LayerDrop(count=3, strategy="even"))     # 6 -> 3 layers: keeps 0, 2, 4
        >>> prune_(model, LayerDrop(keep=(0, 1, 5)))
    """

    keep: tuple[int, ...] = ()
    count: Optional[int] = None
    ratio: Optional[float] = None
    strategy: str = "importance"

    def validate(self) -> None:
        given = [bool(self.keep), self.count is not None, self.ratio is not None]
        check(sum(given) == 1, "layers: give exactly one of keep, count or ratio")
        check(self.count is None or self.count >= 1, f"layers: count must be >= 1, got {self.count}")
        check(self.ratio is None or 0 < self.ratio < 1, f"layers: ratio must be in (0, 1), got {self.ratio}")
        check(all(i >= 0 for i in self.keep) and len(set(self.keep)) == len(self.keep),
              f"layers: keep must list distinct indices >= 0, got {list(self.keep)}")
        check(self.strategy in STRATEGIES, f"layers: strategy must be one of {STRATEGIES}, got {self.strategy!r}")


def set_layers(module: nn.Module, keep: Sequence[int]) -> None:
    """Keep layers `keep` (in that order) and make the config and layer indices agree."""
    parent, attr, _ = find_layers(module)
    old = getattr(parent, attr)
    setattr(parent, attr, nn.ModuleList([old[i] for i in keep]))
    cfg = module.config
    cfg.num_hidden_layers = len(keep)
    types = getattr(cfg, "layer_types", None)
    if isinstance(types, (list, tuple)) and len(types) == len(old):
        cfg.layer_types = [types[i] for i in keep]
    for j, layer in enumerate(getattr(parent, attr)):
        for m in layer.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = j


@contextlib.contextmanager
def _only(module: nn.Module, keep: Sequence[int]) -> Iterator[None]:
    """Temporarily run only layers `keep` (to measure the loss without the others)."""
    parent, attr, _ = find_layers(module)
    layers, cfg = getattr(parent, attr), module.config
    saved = (cfg.num_hidden_layers, getattr(cfg, "layer_types", None))
    indices = [[(m, m.layer_idx) for m in layer.modules() if isinstance(getattr(m, "layer_idx", None), int)]
               for layer in layers]
    set_layers(module, keep)
    try:
        yield
    finally:
        setattr(parent, attr, layers)
        cfg.num_hidden_layers = saved[0]
        if saved[1] is not None:
            cfg.layer_types = saved[1]
        for pairs in indices:
            for m, idx in pairs:
                m.layer_idx = idx


def even(n: int, k: int) -> list[int]:
    """k evenly spaced layers of n, starting at 0: even(6, 3) = [0, 2, 4]."""
    return [i * n // k for i in range(k)]


def greedy(model: LeanModel, objective: Objective, drop: int) -> tuple[list[int], list[float]]:
    """Drop `drop` layers one at a time, each time the one whose absence hurts the loss least."""
    parent, attr, _ = find_layers(model.module)
    kept = list(range(len(getattr(parent, attr))))
    losses = []
    for _ in range(drop):
        trial = {}
        for i in kept:
            with _only(model.module, [j for j in kept if j != i]):
                trial[i] = objective.mean()
        worst = min(trial, key=lambda i: (trial[i], i))
        kept.remove(worst)
        losses.append(round(trial[worst], 6))
    return kept, losses


@transform(LayerDrop)
def _apply(model: LeanModel, config: LayerDrop, ctx: PruneContext) -> dict:
    parent, attr, _ = find_layers(model.module)
    n = len(getattr(parent, attr))
    params = param_count(model.module)
    extra: dict = {}
    if config.keep:
        bad = [i for i in config.keep if i >= n]
        if bad:
            raise ConfigError(f"layers: keep names layer(s) {bad}, but the model has {n} (0..{n - 1})")
        keep = list(config.keep)
    else:
        drop = config.count if config.count is not None else int(round(config.ratio * n))
        if not 1 <= drop <= n - 1:
            raise ConfigError(f"layers: cannot remove {drop} of {n} layers (at least 1, at most {n - 1})")
        if config.strategy == "even":
            keep = even(n, n - drop)
        else:
            model.module.eval()
            keep, extra["losses"] = greedy(model, Objective(model, ctx, "layers"), drop)
    set_layers(model.module, keep)
    return {"kept": keep, "removed": sorted(set(range(n)) - set(keep)), "layers_before": n,
            "layers_after": len(keep), "params_before": params, "params_after": param_count(model.module), **extra}
