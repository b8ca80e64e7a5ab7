"""Sweep K for K-means and measure the elbow metrics.

Two strategies, chosen by the settings:

*Colour only* (``spatial_weight == 0``). Every pixel of the same colour is the
same point, so weighted K-means on the distinct colours (weights = pixel counts)
optimises exactly the K-means objective over all pixels. To find good centres
fast, each K is first fitted on a coarser histogram (colours grouped by their
top 6 bits per channel; each group represented by the weighted mean of its
members' features) with several initialisations, then refined with Lloyd
iterations on the exact distinct colours. The WCSS reported is always evaluated
exactly at the final centres over every distinct colour with its count, which
equals the sum over all pixels.

*With position* (``spatial_weight > 0``). Position breaks the collapse, so each
K is fitted on a fixed-seed sample of pixels (:data:`SPATIAL_SAMPLE` pixels) and
then every pixel is assigned; WCSS is again summed over every pixel. The
Calinski-Harabasz and Davies-Bouldin indices are computed on the sample.

In both, WCSS is made non-increasing in K: if a fit for K lands in a worse local
minimum than K-1, it is re-fitted from the K-1 centres plus the point that costs
most, which can only lower the objective; the better of the two is kept.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .colours import COLOUR_SPANS, ColourHistogram, colour_histogram, convert_colours
from .errors import KsegError
from .levels import ColourLevels, build_levels, nearest_centres
from .settings import SegmentSettings

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "METRIC_COLUMNS",
    "SPATIAL_SAMPLE",
    "SweepResult",
    "assign_labels",
    "pixel_features",
    "sweep",
    "sweep_from_arrow",
    "sweep_to_arrow",
]

#: Pixels sampled to fit K-means when position features are on.
SPATIAL_SAMPLE = 50_000
#: Pixels sampled (with a fixed seed) for the silhouette score, which is O(n^2).
SILHOUETTE_SAMPLE = 1_000
#: Columns of :attr:`SweepResult.table`, in order.
METRIC_COLUMNS = (
    "k",
    "k_effective",
    "wcss",
    "explained_variance",
    "silhouette",
    "calinski_harabasz",
    "davies_bouldin",
    "seconds",
    "iterations",
)

_N_INIT = 5  # k-means++ initialisations per K, on the 5-bit bins
_N_SPLITS = 2  # greedy splits of the K-1 solution tried per K
_N_CANDIDATES = 32  # new-centre candidates scored per K for the greedy splits
_CHUNK = 262_144


@dataclass(frozen=True)
class SweepResult:
    """The elbow metrics of one image over a range of K.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per K with the columns of :data:`METRIC_COLUMNS`. ``wcss`` is in the
        units of scikit-learn's ``inertia_`` for the chosen features; ``k_effective``
        is K capped at the number of distinct feature points.
    centres : dict of int to (k_effective, D) ndarray of float64
        The cluster centres found for each K, in feature space.
    features : str
    spatial_weight : float
    n_pixels, n_colours : int
    strategy : str
        ``"distinct-colours"`` or ``"sampled-pixels"``.
    """

    table: pd.DataFrame
    centres: dict[int, np.ndarray] = field(repr=False)
    features: str
    spatial_weight: float
    n_pixels: int
    n_colours: int
    strategy: str

    @property
    def k_values(self) -> list[int]:
        """The K values swept, ascending."""
        return [int(k) for k in self.table["k"]]

    @property
    def wcss(self) -> list[float]:
        """WCSS per K, aligned with :attr:`k_values`."""
        return [float(v) for v in self.table["wcss"]]

    @property
    def capped(self) -> bool:
        """True if some K exceeded the number of distinct points and was capped."""
        return bool((self.table["k_effective"] < self.table["k"]).any())


def _weighted_indices(points, weights, labels, k):
    """Calinski-Harabasz and Davies-Bouldin indices of a weighted clustering.

    scikit-learn's ``calinski_harabasz_score`` and ``davies_bouldin_score`` take no
    sample weights; these are the same formulas with each point counted ``weight``
    times, so they equal scikit-learn's values on the expanded pixel set
    (tested in ``tests/pipeline/test_sweep.py``).
    """
    present = np.unique(labels)
    n_clusters = present.size
    if n_clusters < 2:
        return float("nan"), float("nan")
    n = weights.sum()
    nk = np.bincount(labels, weights=weights, minlength=k)[present]
    sums = np.column_stack(
        [
            np.bincount(labels, weights=weights * points[:, d], minlength=k)
            for d in range(points.shape[1])
        ]
    )[present]
    means = sums / nk[:, None]
    remap = np.full(k, -1)
    remap[present] = np.arange(n_clusters)
    lab = remap[labels]
    diff = points - means[lab]
    sq = np.einsum("ij,ij->i", diff, diff)
    within = float(np.dot(weights, sq))
    overall = (weights @ points) / n
    between = float(np.dot(nk, ((means - overall) ** 2).sum(axis=1)))
    if n - n_clusters <= 0:
        ch = float("nan")
    elif within == 0:
        ch = 1.0
    else:
        ch = between * (n - n_clusters) / (within * (n_clusters - 1))
    intra = np.bincount(lab, weights=weights * np.sqrt(sq), minlength=n_clusters) / nk
    cd = np.sqrt(((means[:, None, :] - means[None, :, :]) ** 2).sum(axis=2))
    if np.allclose(intra, 0) or np.allclose(cd, 0):
        db = 0.0
    else:
        cd[cd == 0] = np.inf
        combined = (intra[:, None] + intra[None, :]) / cd
        np.fill_diagonal(combined, -np.inf)
        db = float(np.mean(np.max(combined, axis=1)))
    return ch, db


def _silhouette(points, labels):
    from sklearn.metrics import silhouette_score

    n_labels = np.unique(labels).size
    if n_labels < 2 or n_labels > labels.size - 1:
        return float("nan")
    return float(silhouette_score(points, labels))


def pixel_features(
    rgb: np.ndarray,
    hist: ColourHistogram,
    colour_features: np.ndarray,
    spatial_weight: float,
    features: str,
    rows: np.ndarray | None = None,
    *,
    index: np.ndarray | None = None,
) -> np.ndarray:
    """Feature vectors (colour, then scaled x and y) of some or all pixels.

    Parameters
    ----------
    rgb : (H, W, 3) ndarray of uint8
    hist : ColourHistogram
        Of ``rgb``.
    colour_features : (M, 3) ndarray of float64
        ``convert_colours(hist.colours, features)``.
    spatial_weight : float
        Position scale: the larger image side spans ``spatial_weight`` times the
        colour space's nominal span (255 for RGB, 100 for Lab L, 1 for HSV).
    features : str
    rows : (n,) ndarray of int, optional
        Flat pixel indices to return; all pixels if omitted.
    index : (H * W,) ndarray of int, optional
        ``hist.pixel_index(rgb).ravel()``, if the caller already has it.

    Returns
    -------
    (n, 5) ndarray of float64
    """
    height, width = rgb.shape[:2]
    flat = np.arange(height * width) if rows is None else np.asarray(rows)
    index = (hist.pixel_index(rgb).ravel() if index is None else index)[flat]
    scale = spatial_weight * COLOUR_SPANS[features] / max(height, width)
    ys, xs = np.divmod(flat, width)
    return np.column_stack([colour_features[index], xs * scale, ys * scale])


def assign_labels(
    rgb: np.ndarray,
    centres: np.ndarray,
    *,
    features: str,
    spatial_weight: float = 0.0,
    hist: ColourHistogram | None = None,
    index: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Label every pixel with its nearest centre.

    Parameters
    ----------
    rgb : (H, W, 3) ndarray of uint8
    centres : (K, D) ndarray of float64
        In feature space (D = 3, or 5 with position).
    features : str
    spatial_weight : float
    hist : ColourHistogram, optional
        Of ``rgb``; computed if omitted.
    index : (H * W,) ndarray of int, optional
        ``hist.pixel_index(rgb).ravel()`` (position features only), if known.

    Returns
    -------
    labels : (H, W) ndarray of int32
    wcss : float
        Sum over pixels of the squared distance to the assigned centre.
    """
    hist = colour_histogram(rgb) if hist is None else hist
    colour_features = convert_colours(hist.colours, features)
    height, width = rgb.shape[:2]
    if spatial_weight == 0:
        lab, sq = nearest_centres(colour_features, centres)
        wcss = float(np.dot(hist.counts, sq))
        return hist.broadcast(rgb, lab), wcss
    index = hist.pixel_index(rgb).ravel() if index is None else index
    labels = np.empty(height * width, dtype=np.int32)
    wcss = 0.0
    for start in range(0, height * width, _CHUNK * 4):
        rows = np.arange(start, min(start + _CHUNK * 4, height * width))
        pts = pixel_features(
            rgb, hist, colour_features, spatial_weight, features, rows, index=index
        )
        lab, sq = nearest_centres(pts, centres)
        labels[rows] = lab
        wcss += float(sq.sum())
    return labels.reshape(height, width), wcss


def _kmeans(points, weights, init, k, seed, n_init=1, max_iter=300):
    from sklearn.cluster import KMeans  # lazy: scikit-learn costs ~0.5 s to import

    model = KMeans(n_clusters=k, init=init, n_init=n_init, max_iter=max_iter, random_state=seed)
    model.fit(points, sample_weight=weights)
    return model


def _split_inits(points, weights, prev, n_best, rng):
    """The K-1 centres plus each of the ``n_best`` best single new centres.

    Candidates are drawn k-means++ style (in proportion to their cost under the
    K-1 centres) and scored by how much they would lower the objective if added,
    the "fast global k-means" rule of Likas et al. (2003) on a candidate sample.
    """
    _, d = nearest_centres(points, prev)
    p = weights * d
    if p.sum() <= 0:
        return []
    cand = points[np.unique(rng.choice(points.shape[0], size=_N_CANDIDATES, p=p / p.sum()))]
    dist = (
        np.einsum("ij,ij->i", cand, cand)[:, None]
        - 2.0 * cand @ points.T
        + np.einsum("ij,ij->i", points, points)[None, :]
    )
    gain = np.maximum(d[None, :] - dist, 0.0) @ weights
    order = np.argsort(-gain, kind="stable")[:n_best]
    return [np.vstack([prev, cand[i]]) for i in order if gain[i] > 0]


def _restarts(levels: ColourLevels, k: int, seed: int):
    """The best of several k-means++ restarts for K, on the 5-bit bins.

    Restarts run both on the 5-bit bins and on the 4-bit bins (refined on the 5-bit
    ones): different levels land in different basins. Independent of other K.
    """
    from threadpoolctl import threadpool_limits

    seeds, coarse = levels.seeds, levels.coarse
    with threadpool_limits(limits=1):  # also in worker threads, which start unlimited
        best = _kmeans(coarse.means, coarse.weights, "k-means++", k, seed, _N_INIT)
        start = _kmeans(seeds.means, seeds.weights, "k-means++", k, seed, _N_INIT)
        other = _kmeans(coarse.means, coarse.weights, start.cluster_centers_, k, seed)
    iterations = int(best.n_iter_ + start.n_iter_ + other.n_iter_)
    return (other if other.inertia_ < best.inertia_ else best), iterations


def _binned(levels: ColourLevels, k: int) -> bool:
    """Whether K is fitted on the bins (else directly on the few distinct colours)."""
    return levels.seeds.means.shape[0] > k and levels.fine.means.shape[0] > k


def _fit_colours(levels: ColourLevels, k, prev, seed, restart):
    """Centres for K on the colour levels, coarse to fine.

    Candidates, all fitted on the 5-bit bins: ``restart`` (see :func:`_restarts`)
    and the best few greedy splits of the K-1 solution. The candidate with the
    lowest objective is polished on the 6-bit bins.
    """
    if not _binned(levels, k):
        model = _kmeans(levels.points, levels.weights, "k-means++", k, seed, _N_INIT)
        return model.cluster_centers_, int(model.n_iter_)
    coarse, fine = levels.coarse, levels.fine
    best, iterations = restart
    if prev is not None and prev.shape[0] == k - 1:
        rng = np.random.default_rng([seed, k])
        for init in _split_inits(coarse.means, coarse.weights, prev, _N_SPLITS, rng):
            greedy = _kmeans(coarse.means, coarse.weights, init, k, seed)
            iterations += greedy.n_iter_
            if greedy.inertia_ < best.inertia_:
                best = greedy
    polished = _kmeans(fine.means, fine.weights, best.cluster_centers_, k, seed)
    return polished.cluster_centers_, int(iterations + polished.n_iter_)


def _all_restarts(levels: ColourLevels, ks: list[int], seed: int) -> dict[int, tuple]:
    """:func:`_restarts` for every K, two at a time.

    scikit-learn's Lloyd iterations release the GIL, so two single-threaded fits in
    two Python threads use both cores without OpenMP's busy-waiting threads (which
    made a loaded machine several times slower). Results do not depend on the
    order: every fit has its own fixed seed.
    """
    from concurrent.futures import ThreadPoolExecutor

    todo = [k for k in ks if _binned(levels, k)]
    if not todo:
        return {}
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        return dict(zip(todo, pool.map(lambda k: _restarts(levels, k, seed), todo), strict=True))


def _colour_metrics(levels: ColourLevels, centres, wcss, bin_labels, n_pixels):
    """Calinski-Harabasz from the exact WCSS; Davies-Bouldin on the fine bins."""
    k = centres.shape[0]
    if k < 2:
        return float("nan"), float("nan")
    between = levels.total_ss - wcss
    ch = 1.0 if wcss <= 0 else between * (n_pixels - k) / (wcss * (k - 1))
    _, db = _weighted_indices(levels.fine.means, levels.fine.weights, bin_labels, k)
    return ch, db


def _distinct_count(points: np.ndarray, limit: int) -> int:
    """Number of distinct rows of ``points``, capped: counting stops mattering at ``limit``."""
    return int(min(np.unique(points, axis=0).shape[0], limit))


def sweep(
    rgb: np.ndarray, settings: SegmentSettings, *, hist: ColourHistogram | None = None
) -> SweepResult:
    """Fit K-means for every K of ``settings.sweep_k_values`` and measure the curve.

    Parameters
    ----------
    rgb : (H, W, 3) ndarray of uint8
    settings : SegmentSettings
        Validated settings (``features``, ``spatial_weight``, ``seed``, K range).
    hist : ColourHistogram, optional
        The colour histogram of ``rgb``, if the caller already has it.

    Returns
    -------
    SweepResult
        ``wcss`` is exact over all pixels for the centres reported and
        non-increasing in K.
    """
    from threadpoolctl import threadpool_limits

    # The fits run on at most a few hundred thousand points, where OpenMP and BLAS threads
    # cost more than they save, and on a busy machine scikit-learn's spinning
    # threads made the sweep 5x slower (20.8 s against 4.2 s single-threaded).
    with threadpool_limits(limits=1):
        return _sweep(rgb, settings, colour_histogram(rgb) if hist is None else hist)


def _sweep(rgb: np.ndarray, settings: SegmentSettings, hist: ColourHistogram) -> SweepResult:
    settings.validate()
    colour_features = convert_colours(hist.colours, settings.features)
    rng = np.random.default_rng(settings.seed)
    spatial = settings.spatial_weight > 0
    levels = index = None
    if spatial:
        n = hist.n_pixels
        index = hist.pixel_index(rgb).ravel()
        rows = np.sort(rng.choice(n, size=min(n, SPATIAL_SAMPLE), replace=False))
        points = pixel_features(
            rgb,
            hist,
            colour_features,
            settings.spatial_weight,
            settings.features,
            rows,
            index=index,
        )
        weights = np.ones(points.shape[0])
        n_distinct = points.shape[0]
        strategy = "sampled-pixels"
    else:
        levels = build_levels(hist, colour_features)
        points, weights = levels.points, levels.weights
        n_distinct = hist.n_colours
        strategy = "distinct-colours"
    restarts = {}
    if levels is not None:
        effective = sorted({min(k, n_distinct) for k in settings.sweep_k_values} - {1})
        restarts = _all_restarts(levels, [k for k in effective if k < n_distinct], settings.seed)
    sil_sample = rng.choice(points.shape[0], size=SILHOUETTE_SAMPLE, p=weights / weights.sum())
    mean = (weights @ points) / weights.sum()
    rows_out, centres_out = [], {}
    prev, prev_wcss = None, np.inf
    for k in settings.sweep_k_values:
        started = time.perf_counter()
        k_eff = min(k, n_distinct)
        iterations = 0
        if k_eff == 1:
            centres = mean[None, :]
        elif k_eff == n_distinct:
            centres = points.copy()
        elif spatial:
            model = _kmeans(points, weights, "k-means++", k_eff, settings.seed, 3)
            centres, iterations = model.cluster_centers_, int(model.n_iter_)
        else:
            centres, iterations = _fit_colours(
                levels, k_eff, prev, settings.seed, restarts.get(k_eff)
            )
        wcss, bin_labels = _wcss(rgb, hist, levels, index, centres, settings)
        if prev is not None and wcss > prev_wcss:
            # A worse local minimum than K-1: the K-1 centres plus the costliest point
            # can only lower every distance, so this candidate is never above K-1.
            _, d = nearest_centres(points, prev)
            fallback = np.vstack([prev, points[np.argmax(weights * d)]])[:k_eff]
            if fallback.shape[0] < k_eff:
                fallback = np.vstack([fallback, centres[fallback.shape[0] :]])
            f_wcss, f_bin_labels = _wcss(rgb, hist, levels, index, fallback, settings)
            if f_wcss < wcss:
                centres, wcss, bin_labels = fallback, f_wcss, f_bin_labels
        wcss = min(wcss, prev_wcss)  # guards float rounding of equal objectives only
        if spatial or levels is None:
            labels, _ = nearest_centres(points, centres)
            ch, db = _weighted_indices(points, weights, labels, k_eff)
            sil_labels = labels[sil_sample]
        else:
            ch, db = _colour_metrics(levels, centres, wcss, bin_labels, hist.n_pixels)
            sil_labels = nearest_centres(points[sil_sample], centres)[0]
        rows_out.append(
            {
                "k": k,
                "k_effective": k_eff,
                "wcss": wcss,
                "silhouette": _silhouette(points[sil_sample], sil_labels),
                "calinski_harabasz": ch,
                "davies_bouldin": db,
                "seconds": time.perf_counter() - started,
                "iterations": iterations,
            }
        )
        centres_out[k] = centres
        prev, prev_wcss = centres, wcss
    table = pd.DataFrame(rows_out)
    total = float(table["wcss"].iloc[0])
    table["explained_variance"] = 1.0 - table["wcss"] / total if total > 0 else 1.0
    table = table[list(METRIC_COLUMNS)].astype(
        {"k": "int64", "k_effective": "int64", "iterations": "int64"}
    )
    return SweepResult(
        table=table,
        centres=centres_out,
        features=settings.features,
        spatial_weight=settings.spatial_weight,
        n_pixels=hist.n_pixels,
        n_colours=hist.n_colours,
        strategy=strategy,
    )


def _wcss(rgb, hist, levels, index, centres, settings) -> tuple[float, np.ndarray | None]:
    """Exact WCSS over all pixels at ``centres`` (and fine-bin labels when binned)."""
    if levels is not None:
        wcss, bin_labels, _ = levels.exact_wcss(centres)
        return wcss, bin_labels
    wcss = assign_labels(
        rgb,
        centres,
        features=settings.features,
        spatial_weight=settings.spatial_weight,
        hist=hist,
        index=index,
    )[1]
    return wcss, None


def sweep_to_arrow(result: SweepResult) -> pa.Table:
    """The sweep as an Arrow table: the metric columns plus each K's centres.

    ``centres`` is a list of ``k_effective * D`` float64 values (row-major); schema
    metadata records the features, spatial weight, pixel and colour counts and
    strategy, so :func:`sweep_from_arrow` restores the :class:`SweepResult`.
    """
    import pyarrow as pa

    table = pa.Table.from_pandas(result.table, preserve_index=False)
    centres = [result.centres[int(k)].ravel().tolist() for k in result.table["k"]]
    dims = {int(k): int(result.centres[int(k)].shape[1]) for k in result.table["k"]}
    table = table.append_column("centres", pa.array(centres, type=pa.list_(pa.float64())))
    meta = {
        "kseg.features": result.features,
        "kseg.spatial_weight": repr(float(result.spatial_weight)),
        "kseg.n_pixels": str(result.n_pixels),
        "kseg.n_colours": str(result.n_colours),
        "kseg.strategy": result.strategy,
        "kseg.centre_dims": json.dumps(dims),
    }
    return table.replace_schema_metadata(meta)


def sweep_from_arrow(table: pa.Table) -> SweepResult:
    """Rebuild a :class:`SweepResult` from :func:`sweep_to_arrow`'s table."""
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    missing = [c for c in (*METRIC_COLUMNS, "centres") if c not in table.column_names]
    if missing or "kseg.features" not in meta:
        raise KsegError(f"not an elbow-metrics table: missing {missing or 'kseg metadata'}")
    frame = table.drop_columns(["centres"]).to_pandas()[list(METRIC_COLUMNS)]
    dims = {int(k): v for k, v in json.loads(meta["kseg.centre_dims"]).items()}
    centres = {
        int(k): np.asarray(flat, dtype=np.float64).reshape(-1, dims[int(k)])
        for k, flat in zip(frame["k"], table.column("centres").to_pylist(), strict=True)
    }
    return SweepResult(
        table=frame,
        centres=centres,
        features=meta["kseg.features"],
        spatial_weight=float(meta["kseg.spatial_weight"]),
        n_pixels=int(meta["kseg.n_pixels"]),
        n_colours=int(meta["kseg.n_colours"]),
        strategy=meta["kseg.strategy"],
    )
