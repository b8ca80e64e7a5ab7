"""Tests of pipeline.segment: the whole engine on real photos."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.colours import convert_colours
from pipeline.segment import SegmentationResult, centres_for, choose_for_sweep, segment_image
from pipeline.settings import SegmentSettings

REL = 1e-9


@pytest.fixture(scope="module", params=["chelsea", "rocket"])
def case(request, photo):
    rgb = photo(request.param, 160)
    settings = SegmentSettings()
    return rgb, settings, segment_image(rgb, settings)


def test_end_to_end_on_a_photo(case):
    rgb, settings, result = case
    assert isinstance(result, SegmentationResult)
    choice, seg, swept = result.choice, result.segmentation, result.sweep
    assert settings.k_min <= choice.k <= settings.k_max
    assert choice.reason in ("elbow", "no_clear_elbow")
    assert 0.0 <= choice.strength <= 1.0
    assert seg.k == choice.k
    assert seg.labels.shape == rgb.shape[:2]
    np.testing.assert_array_equal(np.unique(seg.labels), np.arange(seg.k))
    assert seg.segmented.shape == rgb.shape
    assert swept.k_values == list(settings.sweep_k_values)
    assert set(result.seconds) == {"sweep", "choice", "segment"}
    assert all(v >= 0 for v in result.seconds.values())


def test_segmentation_wcss_equals_sweep_wcss_at_chosen_k(case):
    rgb, settings, result = case
    k = result.choice.k
    swept = result.sweep.wcss[result.sweep.k_values.index(k)]
    assert result.segmentation.wcss == pytest.approx(swept, rel=REL)
    centres = centres_for(result.sweep, k)
    np.testing.assert_array_equal(centres, result.sweep.centres[k])
    lab = convert_colours(rgb.reshape(-1, 3), settings.features)
    brute = ((lab[:, None, :] - centres[None]) ** 2).sum(axis=2).min(axis=1).sum()
    assert result.segmentation.wcss == pytest.approx(brute, rel=REL)


def test_choice_is_choose_for_sweep(case):
    _, settings, result = case
    assert choose_for_sweep(result.sweep, settings) == result.choice


def test_override(photo):
    rgb = photo("coffee", 128)
    result = segment_image(rgb, SegmentSettings(k_override=4))
    assert result.choice.k == 4
    assert result.choice.reason == "override"
    assert result.segmentation.k == 4
    assert result.segmentation.wcss == pytest.approx(
        result.sweep.wcss[result.sweep.k_values.index(4)], rel=REL
    )


def test_deterministic(photo):
    rgb = photo("coffee", 96)
    a = segment_image(rgb, SegmentSettings(seed=5, k_max=6))
    b = segment_image(rgb, SegmentSettings(seed=5, k_max=6))
    assert a.choice == b.choice
    np.testing.assert_array_equal(a.segmentation.labels, b.segmentation.labels)
    np.testing.assert_array_equal(a.segmentation.colours, b.segmentation.colours)


def test_centres_for_unknown_k(case):
    _, _, result = case
    with pytest.raises(KeyError, match="no fit with 40 clusters"):
        centres_for(result.sweep, 40)


def test_invalid_settings_are_refused_before_work(photo):
    from pipeline.errors import SettingsError

    with pytest.raises(SettingsError, match="k_max"):
        segment_image(photo("coffee", 32), SegmentSettings(k_max=100))
