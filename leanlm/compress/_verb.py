"""The skeleton the compression verbs share (`quantize_`, `prune_`, `factorize_`).

Each checks the config's family and the model, builds its context from keyword arguments when
none is given, runs the registered transform and records the step in the model's record; only
the words of their errors and the context class differ, so each family describes its verb once
as a `Verb` and calls `Verb.apply_`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from leanlm.artifact import LeanModel
from leanlm.config import BaseConfig, names, transform_for
from leanlm.errors import ConfigError, UnsupportedError


@dataclass(frozen=True)
class Verb:
    """How one family's in-place verb checks its inputs before running the registered transform.

    Args:
        family: registry family of its configs ("quantize").
        kind: what its configs are called in errors ("quantization").
        name: the verb as a user says it ("quantize").
        needs: the model it takes, for the backend error ("a float PyTorch model").
        quantized: the error for an already-quantized model; "{done}" is replaced by its techniques.
        context: the context class built from keyword arguments when no context is given.
    """

    family: str
    kind: str
    name: str
    needs: str
    quantized: str
    context: type

    def apply_(self, model: LeanModel, config: BaseConfig, context: Any, kwargs: dict[str, Any]) -> LeanModel:
        """Check, run `config`'s transform on `model` in place, record it; returns `model`."""
        from leanlm.compress.quantize import is_quantized  # the quantize package defines its verb with this module

        if getattr(config, "family", None) != self.family:
            raise ConfigError(f"{type(config).__name__} is not a {self.kind} config; "
                              f"valid: {', '.join(names(self.family))}")
        if is_quantized(model):
            raise UnsupportedError(self.quantized.format(done=", ".join(t["type"] for t in model.record.techniques)))
        if model.backend != "torch" or not isinstance(model.module, torch.nn.Module):
            raise UnsupportedError(f"{self.name} needs {self.needs}; this one runs on {model.backend}")
        context = context or self.context(**kwargs)
        extra = transform_for(config)(model, config, context)
        # Accuracy measured before this step no longer describes the model: keep it, labelled as
        # its source's, so a saved pruned or quantized model never shows its teacher's test score.
        metrics = model.record.metrics
        if metrics and set(metrics) != {"source"}:
            model.record.metrics = {"source": {"measured_before": config.name, **metrics}}
        model.add_technique(config, **(extra or {}))
        return model
