"""Every declared bound refuses what is outside it, NaN and infinities included, whatever the
config: the list of bounds is read from the config dataclasses themselves, so that a setting
added tomorrow is checked too."""

from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import udpchat
from udpchat.impair import RateLimit
from udpchat.record import RecordOptions
from udpchat.settings import Bounds, ConfigError


def config_classes() -> list[type[Any]]:
    """Every dataclass in the package with a field that declares its bounds. A module that
    needs an optional extra not installed here is left out (none does in the test env)."""
    found = []
    for module_info in pkgutil.walk_packages(udpchat.__path__, "udpchat."):
        if module_info.name.endswith("__main__"):
            continue  # running it is its import
        module = importlib.import_module(module_info.name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and dataclasses.is_dataclass(value)
                and value.__module__ == module.__name__
                and any("bounds" in each.metadata for each in dataclasses.fields(value))
            ):
                found.append(value)
    return found


CONFIGS = config_classes()
BOUNDED = [
    (config, each)
    for config in CONFIGS
    for each in dataclasses.fields(config)
    if "bounds" in each.metadata
]


def test_the_configs_are_found() -> None:
    """The discovery itself: a walk that found nothing would make every test below vacuous."""
    names = {config.__name__ for config in CONFIGS}
    assert {"ServerConfig", "ProxyConfig", "Impairment", "LoadConfig", "ClientConfig"} <= names
    assert len(BOUNDED) >= 40


EXTREMES = [
    math.nan,
    -math.nan,
    math.inf,
    -math.inf,
    5e-324,  # the smallest subnormal
    -5e-324,
    2.2250738585072014e-308,  # the smallest normal
    1e-321,  # a rate of 0.(320 zeros)1/s
    1.7976931348623157e308,  # the largest float
    -1.7976931348623157e308,
    0.0,
    -0.0,
]
NUMBERS = st.one_of(
    st.sampled_from(EXTREMES),
    st.floats(),  # NaN, infinities and subnormals included
    st.floats(min_value=-1e6, max_value=1e6),
)
WHOLE_EXTREMES = [10**400, -(10**400), 2**64, 2**63, 2**31, 0, -1]
WHOLE_NUMBERS = st.one_of(st.sampled_from(WHOLE_EXTREMES), st.integers())


def in_range(value: float, bounds: Bounds) -> bool:
    """The oracle: a finite number, at least the minimum and at most the maximum, compared
    exactly (fractions, so that no rounding decides)."""
    if isinstance(value, float) and not math.isfinite(value):
        return False
    exact = Fraction(value)
    if bounds.minimum is not None and exact < Fraction(bounds.minimum):
        return False
    return bounds.maximum is None or exact <= Fraction(bounds.maximum)


def is_whole(field: dataclasses.Field[Any]) -> bool:
    return "int" in str(field.type) and "float" not in str(field.type)


def as_value(field: dataclasses.Field[Any], number: float) -> Any:
    """``number`` as the field holds it: a :class:`RateLimit` is a number with a unit."""
    return RateLimit(number) if "RateLimit" in str(field.type) else number


def bounds_text(bounds: Bounds, value: Any) -> str:
    return f"must be {bounds}, not {value}"


REQUIRED = {RecordOptions: {"path": Path("run.jsonl")}}
"""What a config without a default for every field needs to be built at all."""


def check(config: type[Any], field: dataclasses.Field[Any], number: Any) -> None:
    """A value outside the range (NaN and ±inf always) raises a :class:`ConfigError` naming the
    field, in the bound's words; one inside never raises that."""
    bounds: Bounds = field.metadata["bounds"]
    value = as_value(field, number)
    try:
        dataclasses.replace(config(**REQUIRED.get(config, {})), **{field.name: value})
    except ConfigError as error:
        refused = error.setting == field.name and error.problem == bounds_text(bounds, value)
    else:
        refused = False
    assert refused is not in_range(number, bounds), (config.__name__, field.name, number)


@pytest.mark.parametrize(
    ("config", "field"),
    BOUNDED,
    ids=[f"{config.__name__}.{each.name}" for config, each in BOUNDED],
)
def test_every_bound_refuses_nan_infinities_and_what_is_beyond_it(
    config: type[Any], field: dataclasses.Field[Any]
) -> None:
    for number in WHOLE_EXTREMES if is_whole(field) else EXTREMES:
        check(config, field, number)


@settings(max_examples=300)
@given(bounded=st.sampled_from(BOUNDED), data=st.data())
def test_every_bound_takes_exactly_its_range(
    bounded: tuple[type[Any], dataclasses.Field[Any]], data: st.DataObject
) -> None:
    config, field = bounded
    check(config, field, data.draw(WHOLE_NUMBERS if is_whole(field) else NUMBERS))
