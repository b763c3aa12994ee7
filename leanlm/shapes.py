"""Per-module shapes of a model whose structure a technique changed (pruning, low-rank, students).

Plain `transformers` configs describe uniform models: one head count, one feed-forward width.
Structured pruning leaves every layer its own widths, and low-rank factorization replaces a linear
layer by two smaller ones, so neither can be rebuilt from `config.json` alone. The torch backend
therefore saves `describe(module)` in `leanlm.json` (`record.extra["structure"]`) and, on load,
builds the module from its config, calls `rebuild(module, spec)` to give each layer its saved
shape, and only then assigns the saved tensors. This is generic: any composition of techniques
(heads -> FFN -> layers -> low-rank -> int8) round-trips without technique-specific restore code.

Module kinds beyond `nn.Linear` (e.g. a factorized linear) register how to describe and build
themselves with `register_kind`; integer attributes that forward passes read (head counts) are
recorded for the modules that carry them.

Example:
    >>> spec = describe(pruned.module)          # {"modules": {...}, "attrs": {...}}
    >>> fresh = AutoModel.from_config(pruned.module.config)
    >>> rebuild(fresh, spec); fresh.load_state_dict(pruned.module.state_dict())
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from leanlm.errors import ArtifactError

# Integer attributes of attention modules that their forward passes (or our fast decoder) read.
SHAPE_ATTRS = ("num_attention_heads", "attention_head_size", "all_head_size", "num_heads",
               "num_key_value_heads", "num_key_value_groups", "head_dim", "intermediate_size")


@dataclass(frozen=True)
class Kind:
    """How to describe one module type as JSON and build an empty one back from that JSON."""

    name: str
    cls: type
    spec: Callable[[torch.nn.Module], dict[str, Any]]
    build: Callable[[dict[str, Any]], torch.nn.Module]


_KINDS: dict[str, Kind] = {}


def register_kind(name: str, cls: type, spec: Callable[[torch.nn.Module], dict[str, Any]],
                  build: Callable[[dict[str, Any]], torch.nn.Module]) -> None:
    """Let `describe`/`rebuild` handle modules of type `cls` (exact type match)."""
    _KINDS[name] = Kind(name, cls, spec, build)


def _linear_spec(m: torch.nn.Module) -> dict[str, Any]:
    return {"in": int(m.in_features), "out": int(m.out_features), "bias": m.bias is not None}


def _linear_build(s: dict[str, Any]) -> torch.nn.Module:
    return torch.nn.Linear(s["in"], s["out"], bias=s["bias"])


def _norm_spec(m: torch.nn.Module) -> dict[str, Any]:
    return {"shape": list(m.normalized_shape), "eps": m.eps, "affine": m.elementwise_affine}


def _norm_build(s: dict[str, Any]) -> torch.nn.Module:
    return torch.nn.LayerNorm(s["shape"], eps=s["eps"], elementwise_affine=s["affine"])


register_kind("linear", torch.nn.Linear, _linear_spec, _linear_build)
register_kind("layernorm", torch.nn.LayerNorm, _norm_spec, _norm_build)


def _kind_of(module: torch.nn.Module) -> Kind | None:
    for kind in _KINDS.values():
        if type(module) is kind.cls:
            return kind
    return None


def describe(module: torch.nn.Module) -> dict[str, Any]:
    """JSON-able shapes of every registered-kind submodule and the shape attributes (head counts)
    of every module that carries them."""
    modules: dict[str, Any] = {}
    attrs: dict[str, dict[str, int]] = {}
    for name, m in module.named_modules():
        kind = _kind_of(m)
        if kind is not None and name:
            modules[name] = {"kind": kind.name, **kind.spec(m)}
        found = {a: int(getattr(m, a)) for a in SHAPE_ATTRS
                 if isinstance(getattr(m, a, None), int) and not isinstance(getattr(m, a), bool)}
        if found and name:
            attrs[name] = found
    return {"modules": modules, "attrs": attrs}


def _parent(root: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    try:
        parent = root.get_submodule(parent_name) if parent_name else root
    except AttributeError:
        raise ArtifactError(f"saved structure names {name!r}, which this model does not have") from None
    return parent, child


def rebuild(module: torch.nn.Module, spec: dict[str, Any] | None) -> int:
    """Give `module` the saved shapes in `spec` (from `describe`); returns modules replaced.

    Modules are replaced shallow-first, so a factorized linear (a new kind whose children are
    linears) is built before its children are checked. Replaced modules are freshly initialised;
    the caller assigns the saved tensors afterwards.
    """
    if not spec:
        return 0
    from leanlm.config import _load_plugins

    _load_plugins()  # kinds registered by technique modules (e.g. low-rank) must be known
    replaced = 0
    for name in sorted(spec.get("modules", {}), key=lambda n: n.count(".")):
        s = dict(spec["modules"][name])
        kind_name = s.pop("kind")
        kind = _KINDS.get(kind_name)
        if kind is None:
            raise ArtifactError(f"saved structure uses module kind {kind_name!r}, unknown to this leanlm")
        parent, child = _parent(module, name)
        current = getattr(parent, child, None)
        if current is not None and type(current) is kind.cls and kind.spec(current) == s:
            continue
        setattr(parent, child, kind.build(s))
        replaced += 1
    for name, values in spec.get("attrs", {}).items():
        try:
            target = module.get_submodule(name)
        except AttributeError:
            raise ArtifactError(f"saved structure names {name!r}, which this model does not have") from None
        for attr, value in values.items():
            setattr(target, attr, int(value))
    return replaced


def changed(module: torch.nn.Module, reference: torch.nn.Module) -> bool:
    """True if `module`'s described shapes differ from `reference`'s (e.g. the model built from config)."""
    return describe(module) != describe(reference)
