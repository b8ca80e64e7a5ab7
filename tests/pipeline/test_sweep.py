"""Tests of pipeline.sweep: exact WCSS, monotone curves, determinism, capping, indices."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score

from pipeline.colours import COLOUR_SPANS, colour_histogram, convert_colours
from pipeline.errors import KsegError
from pipeline.segment import segment_image
from pipeline.settings import SegmentSettings
from pipeline.sweep import (
    METRIC_COLUMNS,
    SweepResult,
    _silhouette,
    _weighted_indices,
    assign_labels,
    sweep,
    sweep_from_arrow,
    sweep_to_arrow,
)

REL = 1e-9
QUADRANT_COLOURS = np.array(
    [[200, 30, 30], [30, 160, 40], [40, 60, 200], [230, 220, 60]], dtype=np.uint8
)


def pixel_features(rgb: np.ndarray, features: str, spatial_weight: float = 0.0) -> np.ndarray:
    """Every pixel's clustering features, computed independently of the engine."""
    height, width = rgb.shape[:2]
    colour = convert_colours(rgb.reshape(-1, 3), features)
    if spatial_weight == 0:
        return colour
    scale = spatial_weight * COLOUR_SPANS[features] / max(height, width)
    ys, xs = np.mgrid[0:height, 0:width]
    return np.column_stack([colour, xs.ravel() * scale, ys.ravel() * scale])


def brute_wcss(points: np.ndarray, centres: np.ndarray) -> float:
    """sklearn-style inertia: the sum over every pixel of its min squared distance."""
    d = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    return float(d.min(axis=1).sum())


def without_seconds(result: SweepResult) -> pd.DataFrame:
    return result.table.drop(columns=["seconds"])


_CACHE: dict[tuple, SweepResult] = {}


def cached_sweep(name: str, rgb: np.ndarray, settings: SegmentSettings) -> SweepResult:
    key = (name, settings.fingerprint())
    if key not in _CACHE:
        _CACHE[key] = sweep(rgb, settings)
    return _CACHE[key]


# --- colour-only sweep on a real photo -------------------------------------------------------


@pytest.mark.parametrize("features", ["lab", "rgb", "hsv"])
def test_reported_wcss_is_exact_over_every_pixel(photo, features):
    rgb = photo("astronaut", 128)
    result = cached_sweep("astronaut", rgb, SegmentSettings(features=features))
    points = pixel_features(rgb, features)
    for k, reported in zip(result.k_values, result.wcss, strict=True):
        centres = result.centres[k]
        assert centres.shape == (k, 3)
        assert reported == pytest.approx(brute_wcss(points, centres), rel=REL), f"K={k}"


@pytest.mark.parametrize("features", ["lab", "rgb"])
def test_table_shape_and_monotone_curve(photo, features):
    rgb = photo("astronaut", 128)
    settings = SegmentSettings(features=features)
    result = cached_sweep("astronaut", rgb, settings)
    table = result.table
    assert list(table.columns) == list(METRIC_COLUMNS)
    assert result.k_values == list(settings.sweep_k_values) == [1, *range(2, 13)]
    assert (table["k_effective"] == table["k"]).all()
    assert not result.capped
    wcss = np.array(result.wcss)
    assert (np.diff(wcss) <= 0).all(), wcss
    assert wcss[-1] > 0
    points = pixel_features(rgb, features)
    total = float(((points - points.mean(axis=0)) ** 2).sum())
    assert wcss[0] == pytest.approx(total, rel=REL)
    np.testing.assert_allclose(table["explained_variance"], 1 - wcss / wcss[0], rtol=1e-12)
    assert table["explained_variance"].iloc[0] == 0
    assert (table["explained_variance"].between(0, 1)).all()
    assert (table["seconds"] >= 0).all()
    assert (table["iterations"] >= 0).all()
    rest = table.iloc[1:]
    assert rest["silhouette"].between(-1, 1).all()
    assert (rest["calinski_harabasz"] > 0).all()
    assert (rest["davies_bouldin"] > 0).all()
    assert np.isnan(table["silhouette"].iloc[0])
    assert result.strategy == "distinct-colours"
    assert result.n_pixels == rgb.shape[0] * rgb.shape[1]
    assert result.n_colours == colour_histogram(rgb).n_colours
    assert result.features == features
    assert result.spatial_weight == 0.0


def test_rgb_wcss_matches_sklearn_kmeans_inertia_units(photo):
    """At the centres we report, sklearn's own ``KMeans.score`` gives the same inertia."""
    from sklearn.cluster import KMeans

    rgb = photo("coffee", 96)
    result = sweep(rgb, SegmentSettings(features="rgb", k_max=6))
    points = rgb.reshape(-1, 3).astype(np.float64)
    for k in (2, 4, 6):
        centres = result.centres[k]
        model = KMeans(n_clusters=k, init=centres, n_init=1, max_iter=1).fit(points)
        model.cluster_centers_ = centres.copy()  # score() at exactly our centres
        inertia = -model.score(points)
        assert result.wcss[result.k_values.index(k)] == pytest.approx(inertia, rel=REL)


def test_deterministic_for_a_seed(photo):
    rgb = photo("chelsea", 128)
    settings = SegmentSettings(seed=3, k_max=8)
    a, b = sweep(rgb, settings), sweep(rgb, settings)
    pd.testing.assert_frame_equal(without_seconds(a), without_seconds(b))
    assert a.centres.keys() == b.centres.keys()
    for k in a.centres:
        np.testing.assert_array_equal(a.centres[k], b.centres[k])


def test_input_not_modified(photo):
    rgb = np.array(photo("rocket", 64))
    before = rgb.copy()
    sweep(rgb, SegmentSettings(k_max=4))
    np.testing.assert_array_equal(rgb, before)


def test_override_outside_range_is_swept(photo):
    rgb = photo("rocket", 64)
    result = sweep(rgb, SegmentSettings(k_min=2, k_max=4, k_override=7))
    assert result.k_values == [1, 2, 3, 4, 7]
    assert result.centres[7].shape == (7, 3)


# --- known answer: four quadrants ----------------------------------------------------------


def test_quadrants_with_noise_give_four_clusters_near_the_true_colours(quadrants):
    rgb = quadrants(QUADRANT_COLOURS, shape=(64, 80), noise=5.0, seed=11)
    result = segment_image(rgb, SegmentSettings())
    assert result.choice.k == 4
    assert result.choice.reason == "elbow"
    assert result.choice.strength > 0.9
    true_lab = convert_colours(QUADRANT_COLOURS, "lab")
    centres = result.sweep.centres[4]
    # Each true colour has exactly one centre within 2 Lab units of it.
    dist = np.sqrt(((true_lab[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2))
    assert (dist.min(axis=1) < 2.0).all(), dist
    assert sorted(dist.argmin(axis=1)) == [0, 1, 2, 3]
    # The segmentation is the four quadrants (up to a permutation of labels).
    labels = result.segmentation.labels
    height, width = labels.shape
    blocks = [
        labels[: height // 2, : width // 2],
        labels[: height // 2, width // 2 :],
        labels[height // 2 :, : width // 2],
        labels[height // 2 :, width // 2 :],
    ]
    assert sorted(int(np.unique(b)[0]) for b in blocks) == [0, 1, 2, 3]
    assert all(np.unique(b).size == 1 for b in blocks)
    colour_error = np.abs(
        result.segmentation.colours.astype(int)[[int(b[0, 0]) for b in blocks]]
        - QUADRANT_COLOURS.astype(int)
    )
    assert colour_error.max() <= 2


# --- capping on images with few distinct colours ---------------------------------------------


@pytest.mark.parametrize(
    ("order", "n_distinct"),
    [((0, 1, 0, 1), 2), ((0, 1, 2, 0), 3)],
    ids=["two-colours", "three-colours"],
)
@pytest.mark.parametrize("features", ["lab", "rgb"])
def test_few_distinct_colours_are_capped_without_warnings(quadrants, order, n_distinct, features):
    rgb = quadrants(QUADRANT_COLOURS[list(order)], shape=(20, 30))
    settings = SegmentSettings(features=features)
    result = sweep(rgb, settings)  # warnings are errors in this suite
    table = result.table
    assert result.n_colours == n_distinct
    np.testing.assert_array_equal(table["k_effective"], np.minimum(table["k"], n_distinct))
    assert result.capped
    wcss = np.array(result.wcss)
    assert (np.diff(wcss) <= 0).all()
    assert wcss[0] > 0
    assert (wcss[table["k"].to_numpy() >= n_distinct] <= 1e-9 * wcss[0]).all(), wcss
    assert (wcss[table["k"].to_numpy() < n_distinct] > 0).all()
    for k in result.k_values:
        assert result.centres[k].shape == (min(k, n_distinct), 3)
    full = segment_image(rgb, settings)
    assert full.choice.k == n_distinct
    assert full.choice.reason == "elbow"
    assert full.choice.rule == "wcss-zero"
    assert full.segmentation.k == n_distinct
    assert full.segmentation.wcss == pytest.approx(0, abs=1e-6)


def test_single_colour_image_does_not_crash():
    rgb = np.full((10, 12, 3), 77, dtype=np.uint8)
    result = segment_image(rgb, SegmentSettings())
    assert (result.sweep.table["k_effective"] == 1).all()
    assert result.sweep.wcss == [0.0] * len(result.sweep.k_values)
    assert result.choice.k == 1
    assert result.choice.capped
    assert result.segmentation.k == 1
    assert (result.segmentation.labels == 0).all()
    np.testing.assert_array_equal(result.segmentation.segmented, rgb)


# --- weighted Calinski-Harabasz and Davies-Bouldin -------------------------------------------


@pytest.mark.parametrize("features", ["lab", "rgb"])
@pytest.mark.parametrize("k", [2, 3, 5])
def test_weighted_indices_equal_sklearn_on_the_expanded_pixels(quadrants, features, k):
    rgb = quadrants(QUADRANT_COLOURS, shape=(24, 32), noise=12.0, seed=k)
    # Repeat colours: a coarse quantisation makes many pixels share a colour.
    rgb = (rgb // 16) * 16
    hist = colour_histogram(rgb)
    assert hist.counts.max() > 1
    points = convert_colours(hist.colours, features)
    rng = np.random.default_rng(k)
    centres = points[rng.choice(points.shape[0], size=k, replace=False)]
    labels = ((points[:, None, :] - centres[None]) ** 2).sum(axis=2).argmin(axis=1)
    ch, db = _weighted_indices(points, hist.counts.astype(np.float64), labels, k)
    index = hist.pixel_index(rgb).ravel()
    expanded, expanded_labels = points[index], labels[index]
    assert ch == pytest.approx(calinski_harabasz_score(expanded, expanded_labels), rel=REL)
    assert db == pytest.approx(davies_bouldin_score(expanded, expanded_labels), rel=REL)


def test_weighted_indices_with_an_empty_label(quadrants):
    rgb = (quadrants(QUADRANT_COLOURS, shape=(24, 32), noise=10.0, seed=4) // 8) * 8
    hist = colour_histogram(rgb)
    points = convert_colours(hist.colours, "lab")
    labels = (
        ((points[:, None, :] - convert_colours(QUADRANT_COLOURS, "lab")[None]) ** 2)
        .sum(axis=2)
        .argmin(axis=1)
    )
    labels = np.where(labels == 1, 3, labels)  # label 1 is now empty; k stays 4
    ch, db = _weighted_indices(points, hist.counts.astype(np.float64), labels, 4)
    index = hist.pixel_index(rgb).ravel()
    assert ch == pytest.approx(calinski_harabasz_score(points[index], labels[index]), rel=REL)
    assert db == pytest.approx(davies_bouldin_score(points[index], labels[index]), rel=REL)


def test_weighted_indices_single_cluster_is_nan():
    points = np.array([[0.0, 0, 0], [1, 1, 1]])
    ch, db = _weighted_indices(points, np.array([2.0, 3.0]), np.array([0, 0]), 1)
    assert np.isnan(ch) and np.isnan(db)


@pytest.mark.parametrize("k", [2, 5, 12])
def test_silhouette_equals_sklearn_on_a_photo_sample(photo, k):
    from sklearn.cluster import KMeans
    from sklearn.metrics import pairwise_distances, silhouette_score

    rgb = photo("astronaut", 64)
    points = rgb.reshape(-1, 3).astype(np.float64)[::4]
    labels = KMeans(n_clusters=k, n_init=1, random_state=0).fit_predict(points)
    distances = pairwise_distances(points)
    expected = silhouette_score(distances, labels, metric="precomputed")
    assert _silhouette(distances, labels) == pytest.approx(expected, rel=1e-12)


def test_silhouette_counts_singletons_as_zero_and_ignores_absent_labels():
    from sklearn.metrics import pairwise_distances, silhouette_score

    points = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [50, 50, 50], [90, 0, 0]])
    labels = np.array([3, 3, 3, 7, 7])  # label values need not be 0 .. k-1
    distances = pairwise_distances(points)
    expected = silhouette_score(distances, labels, metric="precomputed")
    assert _silhouette(distances, labels) == pytest.approx(expected, rel=1e-12)
    singleton = np.array([0, 0, 0, 0, 1])
    expected = silhouette_score(distances, singleton, metric="precomputed")
    assert _silhouette(distances, singleton) == pytest.approx(expected, rel=1e-12)
    assert np.isnan(_silhouette(distances, np.zeros(5, dtype=int)))
    assert np.isnan(_silhouette(distances, np.arange(5)))


# --- position features -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def spatial_case(photo):
    """A small photo and position-feature settings; the sweep runs (cached) inside each test."""
    rgb = photo("chelsea", 48)
    return rgb, SegmentSettings(spatial_weight=0.5, k_max=6)


def test_spatial_wcss_is_exact_over_every_pixel(spatial_case):
    rgb, settings = spatial_case
    result = cached_sweep("chelsea-48", rgb, settings)
    assert result.strategy == "sampled-pixels"
    points = pixel_features(rgb, settings.features, settings.spatial_weight)
    for k, reported in zip(result.k_values, result.wcss, strict=True):
        centres = result.centres[k]
        assert centres.shape == (k, 5)
        assert reported == pytest.approx(brute_wcss(points, centres), rel=REL), f"K={k}"


def test_spatial_wcss_non_increasing_and_labels_in_range(spatial_case):
    rgb, settings = spatial_case
    result = cached_sweep("chelsea-48", rgb, settings)
    assert (np.diff(result.wcss) <= 0).all()
    for k in result.k_values:
        labels, wcss = assign_labels(
            rgb, result.centres[k], features=settings.features,
            spatial_weight=settings.spatial_weight,
        )  # fmt: skip
        assert labels.shape == rgb.shape[:2]
        assert labels.min() >= 0 and labels.max() < k
        assert wcss == pytest.approx(result.wcss[result.k_values.index(k)], rel=REL)


def test_spatial_segment_image_end_to_end(spatial_case):
    rgb, settings = spatial_case
    full = segment_image(rgb, settings)
    assert settings.k_min <= full.choice.k <= settings.k_max
    labels = full.segmentation.labels
    assert labels.shape == rgb.shape[:2]
    np.testing.assert_array_equal(np.unique(labels), np.arange(full.segmentation.k))


def test_spatial_fit_on_a_sample_still_reports_wcss_over_every_pixel(monkeypatch, photo):
    """With fewer sampled pixels than the image has, WCSS still sums every pixel."""
    import pipeline.sweep as sweep_module

    monkeypatch.setattr(sweep_module, "SPATIAL_SAMPLE", 400)
    rgb = photo("coffee", 48)
    assert rgb.shape[0] * rgb.shape[1] > 400
    settings = SegmentSettings(spatial_weight=1.0, features="rgb", k_max=5, seed=2)
    result = sweep(rgb, settings)
    assert result.strategy == "sampled-pixels"
    assert result.n_pixels == rgb.shape[0] * rgb.shape[1]
    assert (result.table["k_effective"] == result.table["k"]).all()
    points = pixel_features(rgb, "rgb", 1.0)
    assert (np.diff(result.wcss) <= 0).all()
    for k, reported in zip(result.k_values, result.wcss, strict=True):
        assert reported == pytest.approx(brute_wcss(points, result.centres[k]), rel=REL)
    again = sweep(rgb, settings)
    pd.testing.assert_frame_equal(without_seconds(result), without_seconds(again))


# --- Arrow / Parquet round trip ------------------------------------------------------------


def assert_same_sweep(a: SweepResult, b: SweepResult) -> None:
    pd.testing.assert_frame_equal(a.table, b.table)
    assert a.centres.keys() == b.centres.keys()
    for k in a.centres:
        np.testing.assert_array_equal(a.centres[k], b.centres[k])
    for name in ("features", "spatial_weight", "n_pixels", "n_colours", "strategy"):
        assert getattr(a, name) == getattr(b, name), name


@pytest.mark.parametrize("features", ["lab", "rgb"])
def test_sweep_arrow_round_trip(tmp_path, photo, features):
    rgb = photo("astronaut", 128)
    result = cached_sweep("astronaut", rgb, SegmentSettings(features=features))
    table = sweep_to_arrow(result)
    assert table.column_names == [*METRIC_COLUMNS, "centres"]
    assert_same_sweep(sweep_from_arrow(table), result)
    path = tmp_path / "elbow.parquet"
    pq.write_table(table, path, compression="zstd")
    assert_same_sweep(sweep_from_arrow(pq.read_table(path)), result)


def test_sweep_arrow_round_trip_capped(quadrants):
    rgb = quadrants(QUADRANT_COLOURS[[0, 1, 2, 0]], shape=(16, 16))
    result = sweep(rgb, SegmentSettings(k_max=5))
    back = sweep_from_arrow(sweep_to_arrow(result))
    assert_same_sweep(back, result)
    assert back.centres[5].shape == (3, 3)


def test_sweep_from_arrow_refuses_other_tables():
    import pyarrow as pa

    with pytest.raises(KsegError, match="not an elbow-metrics table"):
        sweep_from_arrow(pa.table({"k": [1, 2], "wcss": [2.0, 1.0]}))


# --- properties -----------------------------------------------------------------------------


@st.composite
def small_cases(draw):
    height = draw(st.integers(2, 14))
    width = draw(st.integers(2, 14))
    n_palette = draw(st.integers(1, 24))
    image_seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(image_seed)
    palette = rng.integers(0, 256, size=(n_palette, 3), dtype=np.uint8)
    rgb = palette[rng.integers(0, n_palette, size=(height, width))]
    k_min = draw(st.integers(1, 4))
    k_max = draw(st.integers(max(2, k_min), 6))
    settings = SegmentSettings(
        k_min=k_min,
        k_max=k_max,
        features=draw(st.sampled_from(["lab", "rgb", "hsv"])),
        seed=draw(st.integers(0, 1000)),
    )
    return rgb, settings


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=small_cases())
def test_sweep_properties(case):
    rgb, settings = case
    a = sweep(rgb, settings)
    b = sweep(rgb, settings)
    pd.testing.assert_frame_equal(without_seconds(a), without_seconds(b))
    n_distinct = colour_histogram(rgb).n_colours
    assert a.k_values == list(settings.sweep_k_values)
    np.testing.assert_array_equal(a.table["k_effective"], np.minimum(a.table["k"], n_distinct))
    wcss = np.array(a.wcss)
    assert (np.diff(wcss) <= 0).all(), wcss
    points = pixel_features(rgb, settings.features)
    for k in a.k_values:
        centres = a.centres[k]
        np.testing.assert_array_equal(centres, b.centres[k])
        assert centres.shape == (min(k, n_distinct), 3)
        labels, wcss_k = assign_labels(rgb, centres, features=settings.features)
        assert labels.shape == rgb.shape[:2]
        assert labels.min() >= 0 and labels.max() < centres.shape[0]
        reported = a.wcss[a.k_values.index(k)]
        rounding = 1e-12 * points.shape[0] * (1 + (points**2).sum(axis=1).max())
        assert reported == pytest.approx(brute_wcss(points, centres), rel=REL, abs=rounding)
        assert wcss_k == pytest.approx(reported, rel=REL, abs=rounding)


@hsettings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=small_cases(), weight=st.sampled_from([0.1, 1.0, 5.0]))
def test_spatial_sweep_properties(case, weight):
    rgb, colour_settings = case
    settings = SegmentSettings(**{**colour_settings.to_dict(), "spatial_weight": weight})
    a = sweep(rgb, settings)
    b = sweep(rgb, settings)
    pd.testing.assert_frame_equal(without_seconds(a), without_seconds(b))
    n_pixels = rgb.shape[0] * rgb.shape[1]
    np.testing.assert_array_equal(a.table["k_effective"], np.minimum(a.table["k"], n_pixels))
    assert (np.diff(a.wcss) <= 0).all(), a.wcss
    points = pixel_features(rgb, settings.features, weight)
    rounding = 1e-12 * points.shape[0] * (1 + (points**2).sum(axis=1).max())
    for k in a.k_values:
        centres = a.centres[k]
        assert centres.shape == (min(k, n_pixels), 5)
        labels, _ = assign_labels(rgb, centres, features=settings.features, spatial_weight=weight)
        assert labels.shape == rgb.shape[:2]
        assert labels.min() >= 0 and labels.max() < centres.shape[0]
        reported = a.wcss[a.k_values.index(k)]
        assert reported == pytest.approx(brute_wcss(points, centres), rel=REL, abs=rounding)
