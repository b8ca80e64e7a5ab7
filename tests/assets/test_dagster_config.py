"""The launchpad config maps onto SegmentSettings and refuses bad values by field name."""

from __future__ import annotations

import dagster as dg
import pytest

from assets.config import SegmentationConfig, settings_or_failure
from pipeline.settings import SegmentSettings


def test_defaults_are_the_engine_defaults() -> None:
    assert SegmentationConfig().to_settings() == SegmentSettings()


def test_every_field_is_described_and_maps_to_a_setting() -> None:
    fields = SegmentationConfig.model_fields
    assert set(fields) == set(SegmentSettings().to_dict())
    assert all(f.description for f in fields.values())


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"k_min": 0}, "k_min"),
        ({"k_min": 9, "k_max": 4}, "k_min"),
        ({"k_max": 500}, "k_max"),
        ({"features": "cmyk"}, "features"),
        ({"spatial_weight": -1.0}, "spatial_weight"),
        ({"min_strength": 2.0}, "min_strength"),
        ({"fallback": "guess"}, "fallback"),
        ({"variance_target": 1.0}, "variance_target"),
        ({"k_override": 0}, "k_override"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_values_fail_naming_the_field(values: dict, field: str) -> None:
    with pytest.raises(dg.Failure) as info:
        settings_or_failure(SegmentationConfig(**values))
    assert f"invalid setting {field!r}" in info.value.description
    assert info.value.metadata["field"].value == field
