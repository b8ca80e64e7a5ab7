"""Tests of pipeline.levels: the exact WCSS of the binned levels equals brute force."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.colours import colour_histogram, convert_colours
from pipeline.levels import ColourLevels, build_levels, nearest_centres

REL = 1e-9


def direct_sqdist(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(N, K) squared distances by explicit differences (no |a|^2 - 2ab + |b|^2 expansion)."""
    diff = points[:, None, :] - centres[None, :, :]
    return (diff**2).sum(axis=2)


def wcss_over_colours(levels: ColourLevels, centres: np.ndarray) -> float:
    return float(levels.weights @ direct_sqdist(levels.points, centres).min(axis=1))


def wcss_over_pixels(rgb: np.ndarray, space: str, centres: np.ndarray) -> float:
    pixels = convert_colours(rgb.reshape(-1, 3), space)
    return float(direct_sqdist(pixels, centres).min(axis=1).sum())


def levels_of(rgb: np.ndarray, space: str) -> ColourLevels:
    hist = colour_histogram(rgb)
    return build_levels(hist, convert_colours(hist.colours, space))


def random_centres(levels: ColourLevels, k: int, rng: np.random.Generator) -> np.ndarray:
    """K centres drawn uniformly in the bounding box of the image's features."""
    low, high = levels.points.min(axis=0), levels.points.max(axis=0)
    return rng.uniform(low, high, size=(k, 3))


def boundary_centres(levels: ColourLevels, k: int, rng: np.random.Generator) -> np.ndarray:
    """K centres sitting on (a hair away from) actual colours: many bins straddle them."""
    idx = rng.choice(levels.points.shape[0], size=k, replace=False)
    return levels.points[idx] + rng.normal(0, 1e-3, size=(k, 3))


@pytest.fixture(scope="module", params=["rgb", "lab"])
def space(request) -> str:
    return request.param


@pytest.fixture(scope="module", params=["astronaut", "coffee"])
def image(request, photo) -> np.ndarray:
    return photo(request.param, 128)


@pytest.mark.parametrize("k", [2, 3, 5, 8, 12])
def test_exact_wcss_random_centres(image, space, k):
    levels = levels_of(image, space)
    rng = np.random.default_rng(k)
    centres = random_centres(levels, k, rng)
    wcss, bin_labels, share = levels.exact_wcss(centres)
    assert wcss == pytest.approx(wcss_over_colours(levels, centres), rel=REL)
    assert wcss == pytest.approx(wcss_over_pixels(image, space, centres), rel=REL)
    assert bin_labels.shape == (levels.fine.means.shape[0],)
    assert bin_labels.min() >= 0 and bin_labels.max() < k
    assert 0.0 <= share <= 1.0


@pytest.mark.parametrize("k", [2, 4, 7, 12])
def test_exact_wcss_centres_near_bin_boundaries(image, space, k):
    levels = levels_of(image, space)
    rng = np.random.default_rng(100 + k)
    centres = boundary_centres(levels, k, rng)
    wcss, _, share = levels.exact_wcss(centres)
    assert share > 0, "these centres should force some bins onto the per-colour path"
    assert wcss == pytest.approx(wcss_over_colours(levels, centres), rel=REL)
    assert wcss == pytest.approx(wcss_over_pixels(image, space, centres), rel=REL)


def test_exact_wcss_all_bins_on_the_boundary_path(photo):
    """So many centres that most bins straddle a boundary: most colours go one by one."""
    rgb = photo("chelsea", 128)
    levels = levels_of(rgb, "lab")
    rng = np.random.default_rng(0)
    centres = levels.points[rng.choice(levels.points.shape[0], 100, replace=False)]
    wcss, _, share = levels.exact_wcss(centres)
    assert share > 0.5
    assert wcss == pytest.approx(wcss_over_pixels(rgb, "lab", centres), rel=REL)


def test_k1_wcss_is_the_total_sum_of_squares(image, space):
    levels = levels_of(image, space)
    pixels = convert_colours(image.reshape(-1, 3), space)
    total = float(((pixels - pixels.mean(axis=0)) ** 2).sum())
    assert levels.total_ss == pytest.approx(total, rel=REL)
    np.testing.assert_allclose(levels.mean, pixels.mean(axis=0), rtol=1e-12, atol=1e-9)
    wcss, labels, share = levels.exact_wcss(levels.mean[None, :])
    assert wcss == pytest.approx(total, rel=REL)
    assert (labels == 0).all()
    assert share == 0.0


def test_levels_structure(image, space):
    hist = colour_histogram(image)
    levels = build_levels(hist, convert_colours(hist.colours, space))
    assert levels.points.shape == (hist.n_colours, 3)
    np.testing.assert_array_equal(levels.weights, hist.counts.astype(np.float64))
    for bins, bits in ((levels.fine, 6), (levels.coarse, 5)):
        assert bins.inverse.shape == (hist.n_colours,)
        n_bins = bins.means.shape[0]
        assert n_bins <= 1 << (3 * bits)
        assert bins.inverse.max() == n_bins - 1
        assert bins.weights.sum() == pytest.approx(hist.n_pixels)
        # The members of every bin share the top ``bits`` of each channel.
        top = hist.colours >> (8 - bits)
        first = np.zeros(n_bins, dtype=np.int64)
        first[bins.inverse[::-1]] = np.arange(hist.n_colours)[::-1]
        np.testing.assert_array_equal(top, top[first][bins.inverse])
        # Radius bounds every member's distance from its bin mean.
        dist = np.sqrt(((levels.points - bins.means[bins.inverse]) ** 2).sum(axis=1))
        assert (dist <= bins.radius[bins.inverse] + 1e-9).all()
    assert levels.coarse.means.shape[0] <= levels.fine.means.shape[0]


def test_labels_are_the_nearest_centres(image, space):
    levels = levels_of(image, space)
    centres = random_centres(levels, 6, np.random.default_rng(3))
    expected = direct_sqdist(levels.points, centres).argmin(axis=1)
    np.testing.assert_array_equal(levels.labels(centres), expected)


def test_nearest_centres_in_chunks_matches_brute_force():
    """More points than one chunk (262,144) so the chunked loop is exercised."""
    rng = np.random.default_rng(7)
    points = rng.uniform(-50, 50, size=(300_000, 3))
    centres = rng.uniform(-50, 50, size=(5, 3))
    labels, sqdist = nearest_centres(points, centres)
    assert labels.dtype == np.int32
    d = direct_sqdist(points, centres)
    np.testing.assert_array_equal(labels, d.argmin(axis=1))
    np.testing.assert_allclose(sqdist, d.min(axis=1), rtol=1e-9, atol=1e-9)
    assert (sqdist >= 0).all()


@st.composite
def small_images(draw):
    height = draw(st.integers(1, 12))
    width = draw(st.integers(1, 12))
    n_palette = draw(st.integers(1, 20))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, size=(n_palette, 3), dtype=np.uint8)
    return palette[rng.integers(0, n_palette, size=(height, width))], seed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=small_images(), k=st.integers(1, 6), space=st.sampled_from(["rgb", "lab", "hsv"]))
def test_exact_wcss_property(data, k, space):
    rgb, seed = data
    levels = levels_of(rgb, space)
    rng = np.random.default_rng(seed)
    centres = (
        boundary_centres(levels, k, rng)
        if k <= levels.points.shape[0] and seed % 2
        else random_centres(levels, k, rng)
    )
    wcss, _, _ = levels.exact_wcss(centres)
    expected = wcss_over_pixels(rgb, space, centres)
    # |x|^2 - 2 x.c + |c|^2 rounds to about n * eps * |x|^2 in absolute terms.
    rounding = 1e-12 * rgb.shape[0] * rgb.shape[1] * (1 + (levels.points**2).sum(axis=1).max())
    assert wcss == pytest.approx(expected, rel=REL, abs=rounding)
