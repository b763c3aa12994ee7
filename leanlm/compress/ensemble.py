"""Ensembles: several saved models answer together, as one model directory.

`compose` is the family verb ("compose": ensemble, cascade); `ensemble` is its shorthand. The
result is a LeanModel on the composite backend (`leanlm.runtime.composite`): its call returns
logits (log mean probabilities, or log vote shares), so evaluate, predict and benchmark work
unchanged; saved, it references its members by path and the sha256 of their leanlm.json.

Example:
    >>> ens = ensemble(["runs/a", "runs/b", "runs/c"], mode="vote", output="runs/abc-vote")
    >>> leanlm.evaluate("runs/abc-vote", "movie-snippets")["accuracy"]
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from leanlm.artifact import LeanModel
from leanlm.config import BaseConfig, check, names, register, transform, transform_for
from leanlm.errors import ConfigError
from leanlm.runtime.composite import check_members, composite_model, pinned

FAMILY = "compose"
MODES = ("mean", "vote")


@register(FAMILY, "ensemble")
@dataclass(frozen=True)
class EnsembleConfig(BaseConfig):
    """Average the members' probabilities (mean) or take their majority vote (vote).

    Args:
        mode: "mean" (weighted mean of class probabilities; feature extractors: the re-normalised
            mean of their sentence embeddings) or "vote" (weighted majority of predicted classes,
            ties to the higher mean probability).
        weights: one positive weight per member (None = equal weights).

    Example:
        >>> EnsembleConfig(mode="vote", weights=(2.0, 1.0, 1.0))
    """

    mode: str = "mean"
    weights: tuple[float, ...] | None = None

    def validate(self) -> None:
        check(self.mode in MODES, f"ensemble: mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        check(self.weights is None or (len(self.weights) >= 1 and all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w > 0
            for w in self.weights)), f"ensemble: weights must be positive numbers, got {self.weights!r}")


def resolve_members(members: Sequence[LeanModel | str | os.PathLike]) -> list[LeanModel]:
    """LeanModels for member paths (loaded with their own backends) or already loaded models."""
    from leanlm.models.loading import load

    out = []
    for m in members:
        if not isinstance(m, LeanModel):
            m = load(m)
            if m.path is None:  # a bundled name or plain HF directory: nothing to pin
                raise ConfigError(f"member {m.record.base_model!r} is not a leanlm model directory; save it first")
        out.append(m)
    return out


def compose(members: Sequence[LeanModel | str | os.PathLike], config: BaseConfig, data: Any = None,
            output: str | os.PathLike | None = None, overwrite: bool = False) -> LeanModel:
    """Combine saved models into one composite model with `config` (an ensemble or a cascade).

    Args:
        members: model directories or LeanModels loaded from one (cascades: smallest first).
        config: `EnsembleConfig(...)` or `CascadeConfig(...)`.
        data: dataset name, Splits or TextDataset for configs that calibrate on its validation split.
        output: write the composite model directory here (atomically); None keeps it in memory.
        overwrite: replace `output` if it exists.

    Example:
        >>> m = compose(["runs/small", "runs/large"], CascadeConfig(target_escalation=0.2), data="movie-snippets")
    """
    if getattr(config, "family", None) != FAMILY:
        raise ConfigError(f"{type(config).__name__} is not a compose config; valid: {', '.join(names(FAMILY))}")
    models = resolve_members(members)
    model = transform_for(config)(models, config, data)
    if output is not None:
        model.save(Path(output), overwrite=overwrite)
    return model


def ensemble(members: Sequence[LeanModel | str | os.PathLike], mode: str = "mean",
             weights: Sequence[float] | None = None, output: str | os.PathLike | None = None,
             overwrite: bool = False) -> LeanModel:
    """An ensemble of saved classifiers (or feature extractors) as one model.

    Args:
        members: two or more model directories (or LeanModels loaded from them), any backends;
            they must share the tokenizer and the label set.
        mode: "mean" (average probabilities) or "vote" (majority vote).
        weights: one positive weight per member (None = equal).
        output: write the ensemble's model directory here.
        overwrite: replace `output` if it exists.

    Example:
        >>> ens = ensemble(["runs/a", "runs/b"], weights=[2, 1], output="runs/ab")
        >>> ens.predict(["a fine film"])
    """
    config = EnsembleConfig(mode=mode, weights=tuple(float(w) for w in weights) if weights is not None else None)
    return compose(members, config, output=output, overwrite=overwrite)


@transform(EnsembleConfig)
def _ensemble(members: list[LeanModel], config: EnsembleConfig, data: Any = None) -> LeanModel:
    check_members(members, ("sequence-classification", "feature-extraction"))
    if config.weights is not None and len(config.weights) != len(members):
        raise ConfigError(f"ensemble: {len(config.weights)} weights for {len(members)} members")
    refs = [pinned(m) for m in members]
    return composite_model("ensemble", members, refs, {"mode": config.mode, "weights": config.weights},
                           techniques=[config.to_dict()])
