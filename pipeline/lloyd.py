"""Many small weighted K-means fits, without scikit-learn's per-call set-up.

The centre search (:mod:`pipeline.search`) runs about two hundred K-means fits per
image, most of them on a few thousand binned colours, where the Lloyd iterations
themselves take a millisecond or two. ``KMeans.fit`` wraps each in 2-4 ms of
set-up: input validation, two copies of the data, centring it, the data's
variance for the tolerance and a Python ``set`` of the labels. On a 12-megapixel
photo that set-up was over half of the search's time.

So :func:`lloyd` calls the routine ``KMeans.fit`` itself runs for one
initialisation (scikit-learn's compiled Lloyd loop, ``_kmeans_single_lloyd``) on
inputs prepared once per level (:class:`Points`), and :func:`kmeans_plusplus`
draws scikit-learn's greedy k-means++ for several seeds side by side. The loop is
private to scikit-learn, so if an upgrade moves or changes it, :func:`lloyd` falls
back to ``KMeans.fit`` with the same init and tolerance (the same algorithm, only
slower); ``tests/pipeline/test_lloyd.py`` checks both paths against ``KMeans.fit``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LloydFit", "Points", "kmeans_plusplus", "lloyd"]

#: Relative tolerance, as scikit-learn's ``KMeans(tol=...)`` default.
TOL = 1e-4


@dataclass(frozen=True)
class Points:
    """Weighted points prepared once for many fits.

    Attributes
    ----------
    points : (N, D) ndarray of float64, C-contiguous
    weights : (N,) ndarray of float64
    tol : float
        Absolute tolerance on the summed squared centre shift: :data:`TOL` times
        the mean per-feature variance of ``points`` (scikit-learn's rule).
    sq_norms : (N,) ndarray of float64
        Squared norm of each point.
    """

    points: np.ndarray
    weights: np.ndarray
    tol: float
    sq_norms: np.ndarray

    @classmethod
    def of(cls, points: np.ndarray, weights: np.ndarray) -> Points:
        """Prepare ``points`` (N, D) with sample ``weights`` (N,) for :func:`lloyd`."""
        points = np.ascontiguousarray(points, dtype=np.float64)
        weights = np.ascontiguousarray(weights, dtype=np.float64)
        tol = TOL * float(np.mean(np.var(points, axis=0)))
        return cls(points, weights, tol, np.einsum("nd,nd->n", points, points))


@dataclass(frozen=True)
class LloydFit:
    """The result of :func:`lloyd`.

    Attributes
    ----------
    centres : (K, D) ndarray of float64
    inertia : float
        Weighted sum of squared distances of the points to their nearest centre.
    iterations : int
        Lloyd iterations run.
    """

    centres: np.ndarray
    inertia: float
    iterations: int


def kmeans_plusplus(data: Points, k: int, seeds: list[int]) -> np.ndarray:
    """Greedy k-means++ seeding weighted by ``data.weights``, one draw per seed.

    scikit-learn's algorithm: the first centre is drawn in proportion to weight,
    each next one as the best of ``2 + log K`` candidates drawn in proportion to
    weight times squared distance to the nearest centre so far. It is written out
    rather than called from ``sklearn.cluster.kmeans_plusplus`` because the search
    needs eight draws per K on a few thousand points: done side by side as one
    stack of arrays they cost 40% less (58 ms against 97 ms for K=2..12 on the
    4-bit bins of a 12-megapixel photo).

    Parameters
    ----------
    data : Points
    k : int
        Centres per draw, at most N.
    seeds : list of int
        One seed per draw; the same seed always gives the same centres.

    Returns
    -------
    (len(seeds), k, D) ndarray of float64
        Centres chosen among the points.
    """
    points, weights = data.points, data.weights
    n, n_draws = points.shape[0], len(seeds)
    n_trials = 2 + int(np.log(k))
    rngs = [np.random.default_rng(s) for s in seeds]
    chosen = np.empty((n_draws, k), dtype=np.int64)
    chosen[:, 0] = [rng.choice(n, p=weights / weights.sum()) for rng in rngs]
    closest = _sq_distances(data, points[chosen[:, :1]])[:, :, 0]
    draws = np.arange(n_draws)
    for j in range(1, k):
        cumulative = np.cumsum(closest * weights, axis=1)
        targets = np.stack([rng.uniform(size=n_trials) for rng in rngs]) * cumulative[:, -1:]
        candidates = np.stack(
            [np.searchsorted(cumulative[r], targets[r]) for r in range(n_draws)]
        ).clip(max=n - 1)
        # (R, N, T): every point's squared distance to its nearest centre if each
        # candidate were added.
        with_candidate = np.minimum(_sq_distances(data, points[candidates]), closest[:, :, None])
        best = np.argmin(np.einsum("rnt,n->rt", with_candidate, weights), axis=1)
        chosen[:, j] = candidates[draws, best]
        closest = with_candidate[draws, :, best]
    return points[chosen]


def _sq_distances(data: Points, centres: np.ndarray) -> np.ndarray:
    """Squared distances (R, N, K) of every point to every centre of each set (R, K, D)."""
    d = np.matmul(data.points[None, :, :], centres.transpose(0, 2, 1))
    d *= -2.0
    d += np.einsum("rkd,rkd->rk", centres, centres)[:, None, :]
    d += data.sq_norms[None, :, None]
    return np.maximum(d, 0.0, out=d)


def _compiled_loop():
    """scikit-learn's single-run Lloyd loop, or None if this version has no such loop."""
    try:
        from sklearn.cluster._kmeans import _kmeans_single_lloyd
    except ImportError:
        return None
    return _kmeans_single_lloyd


def lloyd(data: Points, init: np.ndarray, *, max_iter: int = 300) -> LloydFit:
    """Weighted Lloyd iterations from ``init`` until converged (scikit-learn's rule).

    Parameters
    ----------
    data : Points
    init : (K, D) ndarray
        Initial centres; not modified.
    max_iter : int

    Returns
    -------
    LloydFit
    """
    # The loop swaps its centre buffers and so overwrites the array it is given.
    centres = np.array(init, dtype=np.float64, order="C", copy=True)
    loop = _compiled_loop()
    if loop is not None:
        try:
            _, inertia, centres, n_iter = loop(
                data.points, data.weights, centres, max_iter=max_iter, tol=data.tol, n_threads=1
            )
            return LloydFit(np.asarray(centres), float(inertia), int(n_iter))
        except TypeError:  # a scikit-learn whose loop takes other arguments
            pass
    return _fit_with_estimator(data, centres, max_iter)


def _fit_with_estimator(data: Points, init: np.ndarray, max_iter: int) -> LloydFit:
    """The same run through the public ``KMeans.fit`` (slower: per-call set-up)."""
    from sklearn.cluster import KMeans

    model = KMeans(n_clusters=init.shape[0], init=init, n_init=1, max_iter=max_iter, tol=TOL)
    model.fit(data.points, sample_weight=data.weights)
    return LloydFit(model.cluster_centers_, float(model.inertia_), int(model.n_iter_))
