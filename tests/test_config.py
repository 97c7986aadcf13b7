"""Typed configs: JSON round trips, overrides from the command line, and clear errors."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zsad.config import from_dict, to_dict, with_overrides
from zsad.errors import ConfigError


@dataclass
class Inner:
    rate: float = 0.1
    enabled: bool = True


@dataclass
class Outer:
    name: str = "x"
    scales: tuple[int, ...] = (1, 3)
    layers: tuple[int, ...] | None = None
    inner: Inner = field(default_factory=Inner)


@given(st.text(max_size=8), st.lists(st.integers(1, 99), max_size=4), st.floats(0, 1), st.booleans())
def test_round_trip_through_json(name, scales, rate, enabled):
    config = Outer(name=name, scales=tuple(scales), inner=Inner(rate=rate, enabled=enabled))
    assert from_dict(Outer, to_dict(config)) == config


def test_overrides_parse_values_like_a_user_types_them():
    config = with_overrides(Outer(), ["scales=1", "layers=6,12", "inner.enabled=off", "inner.rate=0.5"])
    assert config.scales == (1,)
    assert config.layers == (6, 12)
    assert config.inner == Inner(rate=0.5, enabled=False)
    assert with_overrides(Outer(), ["layers=[3, 4]"]).layers == (3, 4)
    assert with_overrides(Outer(), ["layers=null"]).layers is None


def test_typos_and_bad_values_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown option 'scale'"):
        with_overrides(Outer(), ["scale=1"])
    with pytest.raises(ConfigError, match="expected true/false"):
        with_overrides(Outer(), ["inner.enabled=maybe"])
    with pytest.raises(ConfigError, match="key=value"):
        with_overrides(Outer(), ["scales"])
    with pytest.raises(ConfigError, match="unknown option"):
        from_dict(Outer, {"nope": 1})


@dataclass
class WithText:
    folder: str = "auto"
    ratio: float = 1.0
    mode: tuple[str, ...] = ("a",)


def test_text_fields_keep_what_was_typed():
    config = with_overrides(WithText(), ["folder=off", "ratio=1e-3", "mode=on,off"])
    assert config.folder == "off"  # YAML would have read it as False
    assert config.ratio == pytest.approx(1e-3)
    assert config.mode == ("on", "off")
    assert with_overrides(WithText(), {"folder": "no"}).folder == "no"


def test_mapping_fields_read_key_value_lists_and_yaml():
    @dataclass
    class WithMapping:
        alpha: dict[str, float] = field(default_factory=dict)

    assert with_overrides(WithMapping(), ["alpha=metal nut:0,screw:0.5"]).alpha == {"metal nut": 0.0, "screw": 0.5}
    assert with_overrides(WithMapping(), ["alpha={screw: 1}"]).alpha == {"screw": 1.0}
    assert with_overrides(WithMapping(), ["alpha="]).alpha == {}
    assert from_dict(WithMapping, to_dict(WithMapping({"a": 0.25}))) == WithMapping({"a": 0.25})
    with pytest.raises(ConfigError, match="not of the form key:value"):
        with_overrides(WithMapping(), ["alpha=screw"])
    with pytest.raises(ConfigError, match="expected float"):
        with_overrides(WithMapping(), ["alpha=screw:much"])
