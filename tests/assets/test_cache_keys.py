"""Cache keys: deterministic, and each step hashes only what changes its output."""

from __future__ import annotations

import dataclasses

import pytest

from assets import cache
from assets.keys import CHOSEN, ELBOW, FEATURES, IMAGE_ASSETS, LABELS, RAW, SEGMENTED, STATS
from pipeline.settings import SegmentSettings

SHA = "0" * 64


def _changed(**changes: object) -> set[str]:
    base = cache.chain_keys(SHA, SegmentSettings())
    other = cache.chain_keys(SHA, dataclasses.replace(SegmentSettings(), **changes))
    return {asset for asset in base if base[asset] != other[asset]}


def test_chain_keys_cover_every_step_and_are_deterministic() -> None:
    keys = cache.chain_keys(SHA, SegmentSettings())
    assert set(keys) == set(IMAGE_ASSETS)
    assert keys == cache.chain_keys(SHA, SegmentSettings())
    assert len(set(keys.values())) == len(keys)
    assert all(len(k) == 64 for k in keys.values())


def test_new_bytes_change_every_key() -> None:
    a = cache.chain_keys(SHA, SegmentSettings())
    b = cache.chain_keys("1" * 64, SegmentSettings())
    assert all(a[k] != b[k] for k in a)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"features": "rgb"}, {FEATURES, ELBOW, CHOSEN, SEGMENTED, LABELS, STATS}),
        ({"seed": 3}, {ELBOW, CHOSEN, SEGMENTED, LABELS, STATS}),
        ({"k_max": 8}, {ELBOW, CHOSEN, SEGMENTED, LABELS, STATS}),
        ({"min_strength": 0.21}, {CHOSEN, SEGMENTED, LABELS, STATS}),
        ({"fallback": "knee"}, {CHOSEN, SEGMENTED, LABELS, STATS}),
        ({"variance_target": 0.77}, {CHOSEN, SEGMENTED, LABELS, STATS}),
    ],
)
def test_a_setting_changes_only_the_steps_that_read_it(changes: dict, expected: set) -> None:
    assert _changed(**changes) == expected


def test_code_version_is_part_of_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    before = cache.chain_keys(SHA, SegmentSettings())
    monkeypatch.setitem(cache.CODE_VERSIONS, ELBOW, "999")
    after = cache.chain_keys(SHA, SegmentSettings())
    assert before[RAW] == after[RAW] and before[FEATURES] == after[FEATURES]
    assert {a for a in before if before[a] != after[a]} == {ELBOW, CHOSEN, SEGMENTED, LABELS, STATS}


def test_cache_key_is_sensitive_to_every_part() -> None:
    base = {"code_version": "1", "inputs": ["a"], "settings": {"x": 1}}
    key = cache.cache_key("s", **base)
    assert cache.cache_key("t", **base) != key
    assert cache.cache_key("s", **{**base, "code_version": "2"}) != key
    assert cache.cache_key("s", **{**base, "inputs": ["b"]}) != key
    assert cache.cache_key("s", **{**base, "settings": {"x": 2}}) != key
