"""Tests of pipeline.settings: every bad value is refused with its field named."""

from __future__ import annotations

import json
import math

import pytest

from pipeline.errors import KsegError, SettingsError
from pipeline.settings import MAX_K, SegmentSettings

BAD_VALUES = [
    ("k_min", 0),
    ("k_min", -1),
    ("k_min", MAX_K + 1),
    ("k_min", 2.0),
    ("k_min", "2"),
    ("k_min", True),
    ("k_min", None),
    ("k_max", 1),
    ("k_max", MAX_K + 1),
    ("k_max", 12.5),
    ("k_max", "12"),
    ("k_max", False),
    ("features", "RGB"),
    ("features", "xyz"),
    ("features", ""),
    ("features", None),
    ("spatial_weight", -0.1),
    ("spatial_weight", 10.5),
    ("spatial_weight", math.nan),
    ("spatial_weight", math.inf),
    ("spatial_weight", "1"),
    ("spatial_weight", True),
    ("spatial_weight", None),
    ("seed", -1),
    ("seed", 1.0),
    ("seed", "0"),
    ("seed", True),
    ("seed", None),
    ("k_override", 0),
    ("k_override", MAX_K + 1),
    ("k_override", 4.0),
    ("k_override", "4"),
    ("k_override", True),
    ("min_strength", -0.01),
    ("min_strength", 1.01),
    ("min_strength", math.nan),
    ("min_strength", "0.5"),
    ("min_strength", None),
    ("fallback", "median"),
    ("fallback", None),
    ("variance_target", 0),
    ("variance_target", 1),
    ("variance_target", 1.5),
    ("variance_target", -0.5),
    ("variance_target", math.nan),
    ("variance_target", "0.8"),
]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES, ids=[f"{f}={v!r}" for f, v in BAD_VALUES])
def test_invalid_field_raises_naming_it(field, value):
    settings = SegmentSettings(**{field: value})
    with pytest.raises(SettingsError) as info:
        settings.validate()
    assert info.value.field == field
    assert repr(field) in str(info.value)
    assert isinstance(info.value, KsegError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("field", "value"), BAD_VALUES[:6])
def test_from_dict_validates(field, value):
    with pytest.raises(SettingsError) as info:
        SegmentSettings.from_dict({field: value})
    assert info.value.field == field


def test_k_min_above_k_max_names_k_min_with_both_values():
    with pytest.raises(SettingsError) as info:
        SegmentSettings(k_min=9, k_max=3).validate()
    assert info.value.field == "k_min"
    assert "k_min=9" in str(info.value) and "k_max=3" in str(info.value)


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"k_min": 1, "k_max": 2},
        {"k_min": MAX_K, "k_max": MAX_K},
        {"features": "rgb", "spatial_weight": 10, "seed": 0},
        {"features": "hsv", "spatial_weight": 0.25},
        {"k_override": 1},
        {"k_override": MAX_K},
        {"min_strength": 0, "fallback": "knee", "variance_target": 0.01},
        {"min_strength": 1, "variance_target": 0.99},
    ],
)
def test_valid_settings_pass_and_chain(values):
    settings = SegmentSettings(**values)
    assert settings.validate() is settings


def test_from_dict_refuses_unknown_keys():
    with pytest.raises(SettingsError) as info:
        SegmentSettings.from_dict({"k_min": 2, "colour_space": "lab"})
    assert info.value.field == "colour_space"
    assert "unknown setting" in str(info.value)
    assert "features" in str(info.value)  # the known ones are listed


def test_dict_round_trip_and_fingerprint():
    settings = SegmentSettings(k_min=3, k_max=9, features="rgb", seed=7, k_override=5)
    data = settings.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert SegmentSettings.from_dict(data) == settings
    fingerprint = settings.fingerprint()
    assert json.loads(fingerprint) == data
    assert fingerprint == SegmentSettings.from_dict(data).fingerprint()
    assert fingerprint != SegmentSettings().fingerprint()


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, (1, *range(2, 13))),
        ({"k_min": 1, "k_max": 3}, (1, 2, 3)),
        ({"k_min": 4, "k_max": 6}, (1, 4, 5, 6)),
        ({"k_min": 4, "k_max": 6, "k_override": 9}, (1, 4, 5, 6, 9)),
        ({"k_min": 4, "k_max": 6, "k_override": 2}, (1, 2, 4, 5, 6)),
        ({"k_min": 4, "k_max": 6, "k_override": 5}, (1, 4, 5, 6)),
    ],
)
def test_sweep_k_values(values, expected):
    assert SegmentSettings(**values).sweep_k_values == expected


def test_settings_are_frozen():
    settings = SegmentSettings()
    with pytest.raises(AttributeError):
        settings.k_min = 3  # type: ignore[misc]


def test_every_invalid_field_is_named_at_once():
    settings = SegmentSettings(k_max=1, features="xyz", seed=2**32, variance_target=2.0)
    with pytest.raises(SettingsError) as info:
        settings.validate()
    assert info.value.fields == ("k_max", "features", "seed", "variance_target")
    assert str(info.value).startswith("4 invalid settings: 'k_max': must be between 2 and 64")
    assert "'seed': must be between 0 and 4294967295" in str(info.value)
    assert [p.field for p in settings.problems()] == list(info.value.fields)


def test_a_seed_of_32_bits_is_the_largest_accepted():
    SegmentSettings(seed=2**32 - 1).validate()
    with pytest.raises(SettingsError, match="'seed'"):
        SegmentSettings(seed=2**32).validate()
