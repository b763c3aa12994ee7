"""Quantization: one verb, one config per method, one file per method.

Example:
    >>> m = leanlm.load("runs/sentiment")
    >>> leanlm.quantize_(m, Int8Dynamic())          # in place
    >>> m.save("runs/sentiment-int8")
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from leanlm.artifact import LeanModel
from leanlm.compress._verb import Verb
from leanlm.config import BaseConfig, lookup, names
from leanlm.errors import ConfigError

FAMILY = "quantize"
# Heads stay in float by default: they are tiny, and quantizing them costs accuracy for no speed.
DEFAULT_SKIP = ("classifier", "lm_head", "score", "pooler", "qa_outputs")


@dataclass
class QuantContext:
    """What a transform may need beyond its config: calibration texts and an accuracy probe.

    Args:
        calibration: texts drawn from the task's training split (static int8, GPTQ, SmoothQuant).
        max_length: tokens per calibration text.
        evaluate: callable(LeanModel) -> float, higher is better (sensitivity-aware methods).
    """

    calibration: Sequence[str] | None = None
    max_length: int = 128
    batch_size: int = 16
    evaluate: Callable[[LeanModel], float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def require_calibration(self, method: str, minimum: int = 8) -> list[str]:
        if not self.calibration or len(self.calibration) < minimum:
            raise ConfigError(f"{method} needs calibration texts (at least {minimum}); pass calibration=... "
                              "or --calibration DATASET")
        return list(self.calibration)


def is_quantized(model: LeanModel) -> bool:
    return any(lookup_family(t.get("type", "")) == FAMILY for t in model.record.techniques)


def lookup_family(type_name: str) -> str | None:
    from leanlm.config import _CONFIGS, _load_plugins

    _load_plugins()
    for (family, name) in _CONFIGS:
        if name == type_name:
            return family
    return None


def eligible_linears(module: torch.nn.Module, skip: Sequence[str] = DEFAULT_SKIP) -> dict[str, torch.nn.Linear]:
    """Plain nn.Linear layers whose qualified name has no part listed in `skip`."""
    out = {}
    for name, m in module.named_modules():
        if type(m) is torch.nn.Linear and type(m.weight) in (torch.Tensor, torch.nn.Parameter):
            if not any(part in skip for part in name.split(".")):
                out[name] = m
    return out


_VERB = Verb(FAMILY, "quantization", "quantize", "a float PyTorch model",
             "model is already quantized ({done}); quantize the float model instead", QuantContext)


def quantize_(model: LeanModel, config: BaseConfig, context: QuantContext | None = None, **kwargs: Any) -> LeanModel:
    """Quantize `model` in place with `config`; returns the same model.

    Args:
        model: a LeanModel from `leanlm.load` (torch backend, float weights).
        config: a quantization config, e.g. `Int8Dynamic()`.
        context: calibration texts / evaluation probe for methods that need them
            (or pass them as keyword arguments: calibration=[...], evaluate=fn).

    Raises UnsupportedError for an already-quantized model, a model with no eligible layers,
    or a method that cannot run on this backend/CPU.
    """
    return _VERB.apply_(model, config, context, kwargs)


def quantize(model: LeanModel, config: BaseConfig, context: QuantContext | None = None, **kwargs: Any) -> LeanModel:
    """Like `quantize_`, but returns a quantized copy and leaves `model` untouched."""
    return quantize_(model.clone(), config, context, **kwargs)


def method_names() -> list[str]:
    return names(FAMILY)


def config_class(name: str) -> type[BaseConfig]:
    return lookup(FAMILY, name)


# Config classes by their Python name, imported on first use so `import leanlm` stays light:
#   from leanlm.compress.quantize import Int8Dynamic, GPTQ
_CONFIG_MODULES = {
    "Int8Dynamic": "int8_dynamic", "Int8Static": "int8_static", "Int8WeightOnly": "weight_only",
    "Int4WeightOnly": "weight_only", "Half": "half", "GPTQ": "gptq", "SmoothQuant": "smoothquant",
    "MixedPrecision": "mixed", "Int8Nncf": "nncf_static",
}


def __getattr__(name: str) -> Any:
    if name in _CONFIG_MODULES:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_CONFIG_MODULES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
