"""Pruning: one verb, one config per method, one file per method.

Structured methods (attention heads, feed-forward neurons, whole layers) remove rows and columns,
so the saved model is smaller and every backend runs it faster; per-layer shapes are recorded by
`leanlm.shapes` and rebuilt on load. Unstructured methods (magnitude, Wanda, 2:4) zero weights and
keep every matrix its size: they save nothing on a dense kernel, and the CLI says so.

Example:
    >>> m = leanlm.load("runs/sentiment")
    >>> leanlm.prune_(m, HeadPruning(0.4), calibration=texts, labels=labels)   # in place
    >>> m.save("runs/sentiment-heads40")
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from leanlm.artifact import LeanModel
from leanlm.compress._verb import Verb
from leanlm.compress.quantize import QuantContext
from leanlm.config import BaseConfig, lookup, names

FAMILY = "prune"


@dataclass
class PruneContext(QuantContext):
    """What a pruning transform may need: task data for importance scores, and an accuracy probe.

    Args:
        calibration: texts (the task's training split) for importance scores / activation norms.
        labels: class ids for `calibration` (gradient-based scores on a classifier); None uses the
            model's own predictions as targets, so unlabeled texts work too.
        max_length, batch_size: tokenization of the calibration texts.
        evaluate: callable(LeanModel) -> float, higher is better.
    """

    labels: Sequence[int] | None = None

    def require_texts(self, method: str, minimum: int = 8) -> list[str]:
        return self.require_calibration(method, minimum)


_VERB = Verb(FAMILY, "pruning", "prune", "a PyTorch model",
             "prune the float model, then quantize it (this one is already quantized)", PruneContext)


def prune_(model: LeanModel, config: BaseConfig, context: PruneContext | None = None, **kwargs: Any) -> LeanModel:
    """Prune `model` in place with `config`; returns the same model.

    Args:
        model: a LeanModel from `leanlm.load` (torch backend, float weights, not yet quantized).
        config: a pruning config, e.g. `HeadPruning(0.4)`, `FfnPruning(0.5)`, `LayerDrop(...)`.
        context: calibration texts (and labels) for importance scores, or pass them as keyword
            arguments: calibration=[...], labels=[...].

    Raises UnsupportedError for a quantized model or one not running on PyTorch.
    """
    return _VERB.apply_(model, config, context, kwargs)


def prune(model: LeanModel, config: BaseConfig, context: PruneContext | None = None, **kwargs: Any) -> LeanModel:
    """Like `prune_`, but returns a pruned copy and leaves `model` untouched."""
    return prune_(model.clone(), config, context, **kwargs)


def method_names() -> list[str]:
    return names(FAMILY)


def config_class(name: str) -> type[BaseConfig]:
    return lookup(FAMILY, name)
