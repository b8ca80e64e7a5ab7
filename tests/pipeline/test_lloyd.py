"""Tests of pipeline.lloyd (many small K-means fits) and pipeline.search (the centre search)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans

import pipeline.lloyd as lloyd_module
from pipeline.colours import colour_histogram
from pipeline.levels import build_levels
from pipeline.lloyd import TOL, Points, kmeans_plusplus, lloyd
from pipeline.search import search_centres


@pytest.fixture(scope="module")
def binned(photo):
    """The 5-bit bins of a real photo: the points most of the search's fits run on."""
    rgb = photo("astronaut", 128)
    hist = colour_histogram(rgb)
    levels = build_levels(hist, hist.features("rgb"))
    return levels, Points.of(levels.coarse.means, levels.coarse.weights)


def _estimator(data: Points, init: np.ndarray) -> KMeans:
    model = KMeans(n_clusters=init.shape[0], init=init, n_init=1, tol=TOL)
    return model.fit(data.points, sample_weight=data.weights)


def assert_same_fit(fit, centres: np.ndarray, inertia: float, iterations: int) -> None:
    """Same run up to rounding (the estimator centres the data first)."""
    assert fit.iterations == iterations
    np.testing.assert_allclose(fit.centres, centres, rtol=1e-9, atol=1e-9)
    assert fit.inertia == pytest.approx(inertia, rel=1e-9)


@pytest.mark.parametrize("k", [2, 5, 9])
def test_lloyd_matches_kmeans_fit_from_the_same_init(binned, k):
    _, data = binned
    init = kmeans_plusplus(data, k, [11])[0]
    before = init.copy()
    fit = lloyd(data, init)
    model = _estimator(data, init)
    np.testing.assert_array_equal(init, before)  # the compiled loop overwrites its input
    assert_same_fit(fit, model.cluster_centers_, model.inertia_, model.n_iter_)


def test_lloyd_falls_back_to_the_estimator_when_the_loop_is_missing(binned, monkeypatch):
    _, data = binned
    init = kmeans_plusplus(data, 6, [3])[0]
    fast = lloyd(data, init)
    monkeypatch.setattr(lloyd_module, "_compiled_loop", lambda: None)
    assert_same_fit(lloyd(data, init), fast.centres, fast.inertia, fast.iterations)


def test_lloyd_falls_back_when_the_loop_takes_other_arguments(binned, monkeypatch):
    _, data = binned
    init = kmeans_plusplus(data, 4, [5])[0]

    def changed_signature(points, weights, centres, *, renamed_max_iter=300):
        raise AssertionError("never reached")

    monkeypatch.setattr(lloyd_module, "_compiled_loop", lambda: changed_signature)
    model = _estimator(data, init)
    assert_same_fit(lloyd(data, init), model.cluster_centers_, model.inertia_, model.n_iter_)


def test_lloyd_stops_at_max_iter(binned):
    _, data = binned
    init = kmeans_plusplus(data, 8, [0])[0]
    assert lloyd(data, init, max_iter=2).iterations <= 2
    full = lloyd(data, init)
    assert full.iterations > 2
    assert full.inertia <= lloyd(data, init, max_iter=2).inertia


def test_points_tolerance_is_sklearns_rule(binned):
    _, data = binned
    expected = TOL * float(np.mean(np.var(data.points, axis=0)))
    assert data.tol == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(data.sq_norms, (data.points**2).sum(axis=1), rtol=1e-12)
    assert data.points.flags.c_contiguous and data.points.dtype == np.float64


def test_kmeans_plusplus_draws_are_points_reproducible_and_independent(binned):
    _, data = binned
    draws = kmeans_plusplus(data, 7, [1, 2, 1])
    assert draws.shape == (3, 7, 3)
    np.testing.assert_array_equal(draws[0], draws[2])  # same seed, same centres
    assert not np.array_equal(draws[0], draws[1])
    again = kmeans_plusplus(data, 7, [2])
    np.testing.assert_array_equal(again[0], draws[1])  # a draw does not depend on its batch
    for centres in draws:
        # Every centre is one of the points, and no point is chosen twice.
        d = ((centres[:, None, :] - data.points[None, :, :]) ** 2).sum(axis=2)
        assert (d.min(axis=1) == 0).all()
        assert len({tuple(c) for c in centres}) == 7


def test_kmeans_plusplus_follows_the_weights():
    # Two far-apart groups; one carries almost all the weight. With k=1 the single
    # centre is drawn in proportion to weight, so it lands in the heavy group.
    points = np.array([[0.0, 0, 0], [1, 0, 0], [200, 200, 200], [201, 200, 200]])
    data = Points.of(points, np.array([1e9, 1e9, 1.0, 1.0]))
    firsts = kmeans_plusplus(data, 1, list(range(50)))[:, 0, :]
    assert (firsts[:, 0] <= 1).all()
    # With k=2 the second centre is the other heavy point: its weight times its
    # squared distance (1e9) dwarfs the light group's (2 x 1.2e5), so candidates
    # are drawn there and adding it lowers the cost most.
    pairs = kmeans_plusplus(data, 2, list(range(20)))
    assert (pairs[:, :, 0] <= 1).all()
    # Unweighted, the far group is where the second centre goes.
    even = kmeans_plusplus(Points.of(points, np.ones(4)), 2, list(range(20)))
    assert ((even[:, :, 0] > 100).sum(axis=1) == 1).all()


def test_kmeans_plusplus_rejects_nothing_it_can_seed_with_as_many_centres_as_points():
    points = np.array([[0.0, 0, 0], [10, 0, 0], [0, 10, 0]])
    centres = kmeans_plusplus(Points.of(points, np.ones(3)), 3, [0])[0]
    assert sorted(map(tuple, centres)) == sorted(map(tuple, points))


def test_search_is_deterministic_and_as_good_as_ten_full_kmeans_starts(binned):
    levels, _ = binned
    ks = list(range(2, 9))
    first = search_centres(levels, ks, 0)
    second = search_centres(levels, ks, 0)
    for k in ks:
        np.testing.assert_array_equal(first[k].centres, second[k].centres)
        assert first[k].centres.shape == (k, 3)
        # scikit-learn with ten k-means++ starts on every distinct colour (the
        # search fits on bins only): the search's WCSS, evaluated exactly, is within
        # 0.5% of it (the benchmark's bound, on 12-MP photos, is 0.1%).
        model = KMeans(n_clusters=k, n_init=10, random_state=0)
        model.fit(levels.points, sample_weight=levels.weights)
        ours = levels.exact_wcss(first[k].centres)[0]
        assert ours <= model.inertia_ * 1.005, (k, ours / model.inertia_)
