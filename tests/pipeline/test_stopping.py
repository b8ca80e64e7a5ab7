"""Tests of pipeline.stopping on synthetic merge curves with and without a clear knee."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.regions import MergeCurve
from pipeline.settings import RegionSettings
from pipeline.stopping import choose_stop, gap_strengths

PIXELS = 1000


def curve(per_pixel: list[float]) -> MergeCurve:
    """A merge curve over ``len(per_pixel) + 1`` regions with these costs per pixel."""
    costs = np.asarray(per_pixel, dtype=np.float64) * PIXELS
    n_start = costs.size + 1
    return MergeCurve(
        n_start=n_start,
        regions=np.arange(n_start - 1, 0, -1),
        costs=costs,
        wcss_start=0.0,
        total_ss=float(costs.sum()),
        pixels=PIXELS,
    )


def test_gap_strengths_known_values():
    assert gap_strengths(np.array([2.0, 1.0, 4.0, 0.0, 8.0])).tolist() == [
        1.0, 0.0, 0.5, 0.0, 0.5,
    ]  # fmt: skip


def test_clear_knee_is_kept_with_its_strength():
    # Twenty nearly free merges, then merges of distinct regions: 21 -> 5 regions is free.
    c = curve([0.1] * 16 + [40.0, 55.0, 70.0, 90.0])
    choice = choose_stop(c, RegionSettings())
    assert choice.n_regions == 5
    assert choice.rule == "threshold" and choice.reason == "clear_stop"
    assert choice.strength == pytest.approx(1 - 0.1 / 40.0)
    assert choice.threshold_regions == 5
    assert "clear stop at 5 regions" in choice.detail


def test_no_clear_knee_falls_back_and_says_so():
    # A smooth geometric rise crosses the threshold with no gap anywhere.
    c = curve(list(1.25 ** np.arange(30) * 0.05))
    crossing = int(np.flatnonzero(c.cost_per_pixel > 10.0)[0])
    choice = choose_stop(c, RegionSettings())
    assert choice.reason == "no_clear_stop"
    assert choice.strength == pytest.approx(1 - 1 / 1.25)
    assert choice.rule == "fallback-gap"
    assert choice.n_regions == choice.threshold_regions == c.n_start - crossing
    assert "no clear stop" in choice.detail and "no stronger gap" in choice.detail


def test_gap_fallback_takes_a_stronger_gap_near_the_threshold():
    # The threshold is crossed at 6 regions with a weak gap (6.5 -> 11); the curve's
    # sharp jump (0.5 -> 6) is at 8 regions.
    per_pixel = [0.5] * 10 + [6.0, 6.5, 11.0, 12.0, 13.0, 14.0, 15.0]
    c = curve(per_pixel)
    assert c.n_start == 18
    choice = choose_stop(c, RegionSettings(max_cost=10.5))
    assert choice.threshold_regions == 6
    assert choice.reason == "no_clear_stop" and choice.rule == "fallback-gap"
    assert choice.n_regions == 8
    assert choice.strength == pytest.approx(1 - 0.5 / 6.0)
    kept = choose_stop(c, RegionSettings(max_cost=10.5, fallback="threshold"))
    assert kept.rule == "fallback-threshold" and kept.n_regions == 6
    narrow = choose_stop(c, RegionSettings(max_cost=10.5, gap_span=0.2))
    assert narrow.n_regions == 6  # 8 is more than x1.2 away from 6


def test_cheap_curve_merges_everything_and_expensive_one_nothing():
    cheap = choose_stop(curve([0.1, 0.2, 0.3]), RegionSettings())
    assert cheap.n_regions == 1 and cheap.strength == 1.0
    dear = choose_stop(curve([50.0, 60.0]), RegionSettings())
    assert dear.n_regions == 3 and dear.strength == 1.0


def test_count_is_clamped_to_the_range():
    c = curve([0.1] * 16 + [40.0, 55.0, 70.0, 90.0])
    low = choose_stop(c, RegionSettings(max_regions=3))
    assert low.n_regions == 3 and low.rule == "threshold+clamped"
    assert low.strength == pytest.approx(1 - 55.0 / 70.0)
    high = choose_stop(c, RegionSettings(min_regions=8))
    assert high.n_regions == 8 and "clamped to 8" in high.detail


def test_override_and_empty_curve():
    c = curve([1.0, 2.0, 30.0])
    assert choose_stop(c, RegionSettings(n_regions=2)).n_regions == 2
    capped = choose_stop(c, RegionSettings(n_regions=9))
    assert capped.n_regions == 4 and "capped from 9" in capped.detail
    empty = MergeCurve(1, np.zeros(0, np.int64), np.zeros(0), 0.0, 0.0, 10)
    alone = choose_stop(empty, RegionSettings())
    assert alone.n_regions == 1 and alone.reason == "no_merge"
