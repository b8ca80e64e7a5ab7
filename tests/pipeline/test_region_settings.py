"""Tests of pipeline.settings.RegionSettings: every bad value is refused with its field named."""

from __future__ import annotations

import json
import math

import pytest

from pipeline.errors import SettingsError
from pipeline.settings import MAX_REGIONS, RegionSettings, SegmentSettings

BAD_VALUES = [
    ("enabled", 1),
    ("enabled", "yes"),
    ("source", "largest"),
    ("source", None),
    ("min_share", 0),
    ("min_share", 0.00005),
    ("min_share", 0.2),
    ("min_share", math.nan),
    ("min_share", "0.005"),
    ("min_share", True),
    ("max_cost", 0),
    ("max_cost", -1.0),
    ("max_cost", 20_000),
    ("max_cost", math.inf),
    ("max_cost", "10"),
    ("min_strength", -0.1),
    ("min_strength", 1.5),
    ("min_strength", None),
    ("fallback", "elbow"),
    ("fallback", ""),
    ("gap_span", -0.5),
    ("gap_span", 5),
    ("gap_span", math.nan),
    ("min_regions", 0),
    ("min_regions", 2.0),
    ("min_regions", MAX_REGIONS + 1),
    ("max_regions", 0),
    ("max_regions", "100"),
    ("max_regions", False),
    ("n_regions", 0),
    ("n_regions", 3.0),
    ("n_regions", True),
    ("n_regions", MAX_REGIONS + 1),
]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES, ids=[f"{f}={v!r}" for f, v in BAD_VALUES])
def test_invalid_field_raises_naming_it(field, value):
    with pytest.raises(SettingsError) as info:
        RegionSettings(**{field: value}).validate()
    assert info.value.field == field
    assert f"invalid setting {field!r}" in str(info.value)
    assert repr(value) in str(info.value) or str(value) in str(info.value)


def test_min_regions_above_max_regions_names_both():
    with pytest.raises(SettingsError) as info:
        RegionSettings(min_regions=9, max_regions=3).validate()
    assert info.value.field == "min_regions"
    assert "min_regions=9" in str(info.value) and "max_regions=3" in str(info.value)


def test_every_bad_field_is_listed():
    with pytest.raises(SettingsError) as info:
        RegionSettings(min_share=1.0, fallback="x", n_regions=-2).validate()
    assert info.value.fields == ("min_share", "fallback", "n_regions")
    assert str(info.value).startswith("3 invalid settings")


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"enabled": False},
        {"source": "finest", "min_share": 0.0001, "max_cost": 10_000},
        {"min_share": 0.1, "min_strength": 0, "fallback": "threshold", "gap_span": 0},
        {"min_regions": 1, "max_regions": MAX_REGIONS, "n_regions": MAX_REGIONS},
    ],
)
def test_valid_settings_pass_and_chain(values):
    settings = RegionSettings(**values)
    assert settings.validate() is settings


def test_defaults_are_the_ones_tuned_on_train():
    assert RegionSettings().to_dict() == {
        "enabled": True,
        "source": "chosen",
        "min_share": 0.005,
        "max_cost": 10.0,
        "min_strength": 0.5,
        "fallback": "gap",
        "gap_span": 0.5,
        "min_regions": 1,
        "max_regions": 100,
        "n_regions": None,
    }


def test_dict_round_trip_fingerprint_and_unknown_keys():
    settings = RegionSettings(min_share=0.01, n_regions=7)
    data = settings.to_dict()
    assert RegionSettings.from_dict(json.loads(json.dumps(data))) == settings
    assert json.loads(settings.fingerprint()) == data
    assert settings.fingerprint() != RegionSettings().fingerprint()
    with pytest.raises(SettingsError, match="unknown setting") as info:
        RegionSettings.from_dict({"k_max": 12})
    assert info.value.field == "k_max"


def test_segment_settings_fingerprint_is_unchanged_by_the_region_settings():
    # The K-means stages' cache keys hash SegmentSettings alone.
    assert "min_share" not in SegmentSettings().to_dict()
