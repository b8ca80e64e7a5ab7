"""Cache keys: deterministic, and each step hashes only what changes its output."""

from __future__ import annotations

import dataclasses

import pytest

from assets import steps
from assets.names import (
    CHOSEN,
    ELBOW,
    FEATURES,
    IMAGE_ASSETS,
    LABELS,
    RAW,
    REGION_BOUNDARIES,
    REGION_MAP,
    REGION_STATS,
    SEGMENTED,
    STATS,
)  # fmt: skip
from assets.settings import REGION_FIELDS
from assets.steps.base import cache_key
from pipeline.settings import RegionSettings, SegmentSettings

SHA = "0" * 64
REGIONS = {REGION_MAP, REGION_BOUNDARIES, REGION_STATS}


def _changed(**changes: object) -> set[str]:
    base = steps.chain_keys(SHA, SegmentSettings())
    other = steps.chain_keys(SHA, dataclasses.replace(SegmentSettings(), **changes))
    return {asset for asset in base if base[asset] != other[asset]}


def _changed_regions(**changes: object) -> set[str]:
    base = steps.chain_keys(SHA, SegmentSettings())
    fields = {REGION_FIELDS[name]: value for name, value in changes.items()}
    other = steps.chain_keys(SHA, SegmentSettings(), RegionSettings(**fields))
    return {asset for asset in base if base[asset] != other[asset]}


def test_chain_keys_cover_every_step_and_are_deterministic() -> None:
    keys = steps.chain_keys(SHA, SegmentSettings())
    assert set(keys) == set(IMAGE_ASSETS)
    assert keys == steps.chain_keys(SHA, SegmentSettings())
    assert len(set(keys.values())) == len(keys)
    assert all(len(k) == 64 for k in keys.values())


def test_new_bytes_change_every_key() -> None:
    a = steps.chain_keys(SHA, SegmentSettings())
    b = steps.chain_keys("1" * 64, SegmentSettings())
    assert all(a[k] != b[k] for k in a)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"features": "rgb"}, {FEATURES, ELBOW, CHOSEN, SEGMENTED, LABELS, STATS, *REGIONS}),
        ({"seed": 3}, {ELBOW, CHOSEN, SEGMENTED, LABELS, STATS, *REGIONS}),
        ({"k_max": 8}, {ELBOW, CHOSEN, SEGMENTED, LABELS, STATS, *REGIONS}),
        ({"min_strength": 0.21}, {CHOSEN, SEGMENTED, LABELS, STATS, *REGIONS}),
        ({"fallback": "knee"}, {CHOSEN, SEGMENTED, LABELS, STATS, *REGIONS}),
        ({"variance_target": 0.77}, {CHOSEN, SEGMENTED, LABELS, STATS, *REGIONS}),
    ],
)
def test_a_setting_changes_only_the_steps_that_read_it(changes: dict, expected: set) -> None:
    assert _changed(**changes) == expected


@pytest.mark.parametrize(
    "changes",
    [
        {"max_cost": 20.0},
        {"min_share": 0.01},
        {"stop_strength": 0.2},
        {"stop_fallback": "threshold"},
        {"n_regions": 7},
        {"region_source": "finest"},
        {"max_regions": 50},
    ],
)
def test_a_region_setting_changes_only_the_region_steps(changes: dict) -> None:
    assert _changed_regions(**changes) == REGIONS


def test_code_version_is_part_of_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    before = steps.chain_keys(SHA, SegmentSettings())
    changed = dataclasses.replace(steps.STEPS[ELBOW], code_version="999")
    monkeypatch.setitem(steps.STEPS, ELBOW, changed)
    after = steps.chain_keys(SHA, SegmentSettings())
    assert before[RAW] == after[RAW] and before[FEATURES] == after[FEATURES]
    changed = {a for a in before if before[a] != after[a]}
    assert changed == {ELBOW, CHOSEN, SEGMENTED, LABELS, STATS, *REGIONS}


def test_cache_key_is_sensitive_to_every_part() -> None:
    base = {"code_version": "1", "inputs": ["a"], "settings": {"x": 1}}
    key = cache_key("s", **base)
    assert cache_key("t", **base) != key
    assert cache_key("s", **{**base, "code_version": "2"}) != key
    assert cache_key("s", **{**base, "inputs": ["b"]}) != key
    assert cache_key("s", **{**base, "settings": {"x": 2}}) != key


def test_keys_follow_the_recorded_recipe_so_stored_outputs_stay_valid() -> None:
    # raw_image's key is the one kseg has always used (upgrading keeps decoded images);
    # pixel_features' is schema 2's (the colour table), which recomputes the steps from
    # pixel_features on once after the upgrade.
    keys = steps.chain_keys(SHA, SegmentSettings())
    assert keys[RAW] == cache_key(
        RAW,
        code_version="1",
        inputs=[SHA],
        settings={"max_pixels": 100_000_000, "background": [255, 255, 255]},
    )
    assert keys[FEATURES] == cache_key(
        FEATURES, code_version="2", inputs=[keys[RAW]],
        settings={"features": "lab", "schema_version": "2"},
    )  # fmt: skip
