from dataclasses import dataclass, field

import pytest

from leanlm.config import BaseConfig, check, config_from_dict, lookup, names, register
from leanlm.errors import ConfigError


@dataclass(frozen=True)
class Inner(BaseConfig):
    rank: int = 4

    def validate(self):
        check(self.rank > 0, "rank must be > 0")


@register("testfamily", "toy")
@dataclass(frozen=True)
class Toy(BaseConfig):
    """A toy technique for tests."""

    bits: int = 8
    skip: tuple[str, ...] = ("classifier",)
    inner: Inner = field(default_factory=Inner)
    note: str | None = None

    def validate(self):
        check(self.bits in (4, 8), f"bits must be 4 or 8, got {self.bits}")


def test_json_round_trip_with_nested_and_tuples():
    c = Toy(bits=4, skip=("a", "b"), inner=Inner(rank=2))
    d = c.to_dict()
    assert d == {"type": "toy", "bits": 4, "skip": ["a", "b"], "inner": {"rank": 2}, "note": None}
    assert Toy.from_dict(d) == c
    assert config_from_dict(d) == c
    assert BaseConfig.from_json(c.to_json()) == c


def test_validation_runs_on_creation_and_on_load():
    with pytest.raises(ConfigError, match="bits must be 4 or 8"):
        Toy(bits=3)
    with pytest.raises(ConfigError, match="rank must be > 0"):
        Toy.from_dict({"type": "toy", "inner": {"rank": 0}})


def test_unknown_options_and_types_are_clear():
    with pytest.raises(ConfigError, match="unknown option"):
        Toy.from_dict({"type": "toy", "bitz": 4})
    with pytest.raises(ConfigError, match="unknown testfamily method 'toyy'.*Did you mean 'toy'"):
        lookup("testfamily", "toyy")


def test_frozen_and_hashable():
    c = Toy()
    with pytest.raises(Exception):
        c.bits = 4  # type: ignore[misc]
    assert hash(c) == hash(Toy())


def test_registry_lists_quantize_methods():
    assert "int8-dynamic" in names("quantize")
    assert Toy.summary() == "A toy technique for tests."
