"""Search for good K-means centres for every K on the colour levels, coarse to fine.

K-means has many local minima, and one k-means++ start per K lands in a poor one
often enough to put a visible kink in the elbow curve. The search therefore looks
at several starts per K, but pays for most of them on small proxies of the image
(the binned levels of :mod:`pipeline.levels`):

1. *Restarts* (independent per K): ``N_RESTARTS`` k-means++ starts on the 4-bit
   bins (a few thousand points); the ``N_REFINED`` best distinct ones are refined
   on the 5-bit bins.
2. *Greedy splits* (K ascending): the best K-1 solution plus one new centre,
   chosen among candidates by how much it would lower the objective ("fast global
   k-means", Likas et al. 2003).
3. *Greedy removals* (K descending): the best K+1 solution minus the centre whose
   removal costs least. Splits carry good solutions upwards and removals carry
   them downwards, so one unlucky K is repaired from its neighbours. The
   ``N_GREEDY`` best split candidates are each refined on the 5-bit bins; the
   removal candidates get a few Lloyd iterations there and only the most
   promising is refined to convergence (screening the splits the same way lost
   the best K=12 basin on the mosaic for one seed in five; screening removals
   matched refining them all on every test image and seed, at less cost).
4. *Polish*: the winner on the 5-bit bins is refined on the 6-bit bins, whose
   weighted means are a close proxy of the exact distinct colours.

The caller evaluates the objective exactly at the centres found; this module only
chooses them. Every fit has a fixed seed and none depends on thread timing, so the
result is deterministic.

Everything runs on one thread (the caller limits OpenMP and BLAS to one). The
fits are small (a few thousand points, a few milliseconds each), so they go
through :mod:`pipeline.lloyd`, which skips scikit-learn's per-call set-up. Running
independent K in two Python threads was measured slower, not faster: much of a
fit this small is Python-level work, which holds the GIL, and the threads'
separate allocator arenas made later stages slower too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .levels import ColourLevels, nearest_centres, squared_distances
from .lloyd import LloydFit, Points, kmeans_plusplus, lloyd

__all__ = ["Fit", "search_centres"]

#: k-means++ starts per K on the 4-bit bins.
N_RESTARTS = 8
#: Best distinct restarts per K refined on the 5-bit bins.
N_REFINED = 2
#: Greedy splits of the K-1 solution and removals from the K+1 solution tried per K.
N_GREEDY = 3
#: Lloyd iterations each greedy removal gets before only the best one is finished.
N_SCREEN_ITER = 6
#: Candidate new centres scored per greedy split.
N_CANDIDATES = 32


@dataclass(frozen=True)
class Fit:
    """Centres found for one K, with their objective on the level they were fitted on.

    Attributes
    ----------
    centres : (K, D) ndarray of float64
    inertia : float
        Weighted objective on the fitting level (a proxy; not the exact WCSS).
    iterations : int
        Lloyd iterations spent on this K, over all candidates.
    seconds : float
        Time spent fitting this K, over all candidates.
    """

    centres: np.ndarray
    inertia: float
    iterations: int
    seconds: float


class _Prepared(NamedTuple):
    """The three levels' bins, prepared for :func:`pipeline.lloyd.lloyd`."""

    seeds: Points  # 4-bit bins
    coarse: Points  # 5-bit bins
    fine: Points  # 6-bit bins


def _restart_seed(seed: int, k: int, i: int) -> int:
    """A distinct, reproducible random state for restart ``i`` of K."""
    return int(np.random.SeedSequence([seed, k, i]).generate_state(1)[0])


def _restarts(levels: _Prepared, k: int, seed: int) -> Fit:
    """Best of ``N_RESTARTS`` k-means++ starts on the 4-bit bins, refined on the 5-bit."""
    started = time.perf_counter()
    draws = [_restart_seed(seed, k, i) for i in range(N_RESTARTS)]
    starts = [lloyd(levels.seeds, init) for init in kmeans_plusplus(levels.seeds, k, draws)]
    starts.sort(key=lambda m: m.inertia)
    iterations = sum(m.iterations for m in starts)
    chosen: list[LloydFit] = []
    for m in starts:  # distinct minima only: equal objectives are the same basin
        if all(not np.isclose(m.inertia, c.inertia, rtol=1e-9) for c in chosen):
            chosen.append(m)
        if len(chosen) == N_REFINED:
            break
    refined = [lloyd(levels.coarse, m.centres) for m in chosen]
    iterations += sum(m.iterations for m in refined)
    best = min(refined, key=lambda m: m.inertia)
    return Fit(best.centres, best.inertia, iterations, time.perf_counter() - started)


def _split_inits(
    points: np.ndarray, weights: np.ndarray, prev: np.ndarray, n_best: int, rng
) -> list[np.ndarray]:
    """The K-1 centres plus each of the ``n_best`` best single new centres.

    Candidates are drawn k-means++ style (in proportion to their cost under the
    K-1 centres) and scored by how much they would lower the objective if added.
    """
    _, d = nearest_centres(points, prev)
    p = weights * d
    if p.sum() <= 0:
        return []
    cand = points[np.unique(rng.choice(points.shape[0], size=N_CANDIDATES, p=p / p.sum()))]
    dist = squared_distances(cand, points)
    gain = np.maximum(d[None, :] - dist, 0.0) @ weights
    order = np.argsort(-gain, kind="stable")[:n_best]
    return [np.vstack([prev, cand[i]]) for i in order if gain[i] > 0]


def _removal_inits(
    points: np.ndarray, weights: np.ndarray, centres: np.ndarray, n_best: int
) -> list[np.ndarray]:
    """The K+1 centres minus each of the ``n_best`` centres cheapest to remove.

    Removing a centre moves its points to their second-nearest centre; the cost is
    the weighted sum of those points' extra squared distance.
    """
    d = squared_distances(points, centres)
    two = np.partition(d, 1, axis=1)
    loss = np.bincount(
        np.argmin(d, axis=1), weights=weights * (two[:, 1] - two[:, 0]), minlength=len(centres)
    )
    order = np.argsort(loss, kind="stable")[:n_best]
    return [np.delete(centres, j, axis=0) for j in order]


def _improve(best: Fit, inits: list[np.ndarray], levels: _Prepared, *, screen: bool = False) -> Fit:
    """Refine inits on the 5-bit bins; keep the lowest objective.

    With ``screen``, each init first gets only :data:`N_SCREEN_ITER` Lloyd
    iterations and just the most promising one is run to convergence.
    """
    started = time.perf_counter()
    centres, inertia, iterations = best.centres, best.inertia, best.iterations
    if screen and len(inits) > 1:
        screened = [lloyd(levels.coarse, init, max_iter=N_SCREEN_ITER) for init in inits]
        iterations += sum(m.iterations for m in screened)
        inits = [min(screened, key=lambda m: m.inertia).centres]
    for init in inits:
        model = lloyd(levels.coarse, init)
        iterations += model.iterations
        if model.inertia < inertia:
            centres, inertia = model.centres, model.inertia
    return Fit(centres, inertia, iterations, best.seconds + time.perf_counter() - started)


def search_centres(levels: ColourLevels, ks: list[int], seed: int) -> dict[int, Fit]:
    """Good K-means centres for every K of ``ks``, searched on the binned levels.

    Parameters
    ----------
    levels : ColourLevels
    ks : list of int
        Distinct K values, each at least 2 and below the number of 4-bit bins.
    seed : int

    Returns
    -------
    dict of int to Fit
        Centres polished on the 6-bit bins; ``inertia`` is on those bins.
    """
    ks = sorted(ks)
    bins = (levels.seeds, levels.coarse, levels.fine)
    prepared = _Prepared(*(Points.of(level.means, level.weights) for level in bins))
    best = {k: _restarts(prepared, k, seed) for k in ks}
    coarse = prepared.coarse
    for k in ks:  # greedy splits, carrying good solutions upwards
        if k - 1 in best:
            rng = np.random.default_rng([seed, k])
            inits = _split_inits(coarse.points, coarse.weights, best[k - 1].centres, N_GREEDY, rng)
            best[k] = _improve(best[k], inits, prepared)
    for k in reversed(ks):  # greedy removals, carrying them downwards
        if k - 1 in best:
            inits = _removal_inits(coarse.points, coarse.weights, best[k].centres, N_GREEDY)
            best[k - 1] = _improve(best[k - 1], inits, prepared, screen=True)

    def polish(k: int) -> Fit:
        started = time.perf_counter()
        fit = best[k]
        model = lloyd(prepared.fine, fit.centres)
        return Fit(
            model.centres,
            model.inertia,
            fit.iterations + model.iterations,
            fit.seconds + time.perf_counter() - started,
        )

    return {k: polish(k) for k in ks}
