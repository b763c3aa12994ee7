"""Configs are data: frozen dataclasses, validated on creation, JSON round-trippable.

Every technique is one frozen config class registered under a family ("quantize", "prune", ...)
and a name ("int8-dynamic"), plus one transform registered for that config type. Adding a
technique is one new file; nothing here changes.

Example:
    >>> @register("quantize", "int8-dynamic")
    ... @dataclass(frozen=True)
    ... class Int8Dynamic(BaseConfig):
    ...     per_channel: bool = True
    >>> Int8Dynamic().to_dict()
    {'type': 'int8-dynamic', 'per_channel': True}
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, TypeVar

from leanlm.errors import ConfigError, did_you_mean

C = TypeVar("C", bound="BaseConfig")

# (family, name) -> config class; config class -> transform function
_CONFIGS: dict[tuple[str, str], type["BaseConfig"]] = {}
_TRANSFORMS: dict[type["BaseConfig"], Callable[..., Any]] = {}


def check(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless condition holds; used in `validate`."""
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class BaseConfig:
    """Base of every technique config.

    Subclasses are frozen dataclasses; override `validate` to check values (it runs in
    `__post_init__`, so an invalid config can never exist). `family` and `name` are set by
    `@register`.
    """

    family: ClassVar[str] = ""
    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            # JSON turns tuples into lists; keep configs hashable and immutable.
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        self.validate()

    def validate(self) -> None:  # pragma: no cover - default accepts everything
        """Check field values; raise ConfigError with a message that names the field."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.name} if self.name else {}
        for f in dataclasses.fields(self):
            out[f.name] = _encode(getattr(self, f.name))
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Rebuild a config. On BaseConfig itself (or a family base) dispatch on data["type"]."""
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        type_name = data.pop("type", None)
        target: type[BaseConfig] = cls
        if type_name is not None and (not cls.name or cls.name != type_name):
            target = lookup_any(type_name, family=cls.family or None)
        names = {f.name for f in dataclasses.fields(target)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"{target.name or target.__name__}: unknown option(s) {unknown}; valid: {sorted(names)}"
            )
        hints = typing.get_type_hints(target)
        kwargs = {k: _decode(hints.get(k, Any), v) for k, v in data.items()}
        try:
            return target(**kwargs)  # type: ignore[return-value]
        except TypeError as e:
            raise ConfigError(f"{target.name or target.__name__}: {e}") from None

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        return cls.from_dict(json.loads(text))

    @classmethod
    def options(cls) -> list[dataclasses.Field]:
        """The config's fields, for CLI flags and help."""
        return list(dataclasses.fields(cls))

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip().splitlines()
        return doc[0] if doc else ""


def _encode(value: Any) -> Any:
    if isinstance(value, BaseConfig):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    return value


def _decode(hint: Any, value: Any) -> Any:
    """Turn JSON values back into the field's declared type (nested configs, tuples)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _decode(args[0], value) if len(args) == 1 else value
    if isinstance(hint, type) and issubclass(hint, BaseConfig) and isinstance(value, dict):
        return hint.from_dict(value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, dict):
        sub = typing.get_type_hints(hint)
        return hint(**{k: _decode(sub.get(k, Any), v) for k, v in value.items()})
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        inner = args[0] if args else Any
        return tuple(_decode(inner, v) for v in value)
    return value


def register(family: str, name: str) -> Callable[[type[C]], type[C]]:
    """Class decorator: register a config class under (family, name)."""

    def deco(cls: type[C]) -> type[C]:
        key = (family, name)
        if key in _CONFIGS and _CONFIGS[key] is not cls:
            raise RuntimeError(f"config {family}/{name} registered twice")
        cls.family, cls.name = family, name
        _CONFIGS[key] = cls
        return cls

    return deco


def transform(config_cls: type[BaseConfig]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Function decorator: register the transform that applies `config_cls`."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        _TRANSFORMS[config_cls] = fn
        return fn

    return deco


def transform_for(config: BaseConfig) -> Callable[..., Any]:
    try:
        return _TRANSFORMS[type(config)]
    except KeyError:
        raise ConfigError(f"no transform registered for {type(config).__name__}") from None


def names(family: str) -> list[str]:
    _load_plugins()
    return sorted(n for f, n in _CONFIGS if f == family)


def lookup(family: str, name: str) -> type[BaseConfig]:
    """The config class for `name` in `family`; unknown names list the valid ones."""
    _load_plugins()
    try:
        return _CONFIGS[(family, name)]
    except KeyError:
        raise ConfigError(did_you_mean(name, names(family), f"{family} method")) from None


def lookup_any(name: str, family: str | None = None) -> type[BaseConfig]:
    _load_plugins()
    if family:
        return lookup(family, name)
    hits = [c for (f, n), c in _CONFIGS.items() if n == name]
    if not hits:
        raise ConfigError(did_you_mean(name, [n for _, n in _CONFIGS], "technique"))
    return hits[0]


def config_from_dict(data: dict[str, Any]) -> BaseConfig:
    """Rebuild any registered config from its dict (as stored in leanlm.json)."""
    return BaseConfig.from_dict(data)


_PLUGINS_LOADED = False


def _load_plugins() -> None:
    """Import every technique module once so their @register decorators run."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    import importlib
    import pkgutil

    for pkg_name in ("leanlm.compress.quantize", "leanlm.compress.prune", "leanlm.compress"):
        try:
            pkg = importlib.import_module(pkg_name)
        except ModuleNotFoundError:
            continue
        for mod in pkgutil.iter_modules(pkg.__path__):
            if not mod.name.startswith("_"):
                importlib.import_module(f"{pkg_name}.{mod.name}")
    # single modules that register a family (pre-training objectives); absent ones are skipped
    for mod_name in ("leanlm.train.pretrain", "leanlm.train.causal_lm"):
        try:
            importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name != mod_name:
                raise
