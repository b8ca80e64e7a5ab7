"""Sweep K for K-means and measure the elbow metrics.

Two strategies, chosen by the settings:

*Colour only* (``spatial_weight == 0``). Every pixel of the same colour is the
same point, so weighted K-means on the distinct colours (weights = pixel counts)
optimises exactly the K-means objective over all pixels. Good centres are found
fast on coarser histograms (colours grouped by their top 4, 5 and 6 bits per
channel, each group represented by the weighted mean of its members' features):
see :mod:`pipeline.search`. The WCSS reported is always evaluated exactly at the
final centres over every distinct colour with its count, which equals the sum
over all pixels (:meth:`pipeline.levels.ColourLevels.exact_wcss`). A K not below
the number of occupied 4-bit bins (images with very few colours) is fitted on the
distinct colours directly.

*With position* (``spatial_weight > 0``). Position breaks the collapse, so each
K is fitted on a fixed-seed sample of pixels (:data:`SPATIAL_SAMPLE` pixels) and
then every pixel is assigned; WCSS is again summed over every pixel. The
Calinski-Harabasz and Davies-Bouldin indices are computed on the sample.

In both, WCSS is made non-increasing in K: if a fit for K lands in a worse local
minimum than K-1, the K-1 centres plus the point that costs most are tried, which
can only lower the objective; the better of the two is kept.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .colours import COLOUR_SPANS, ColourHistogram, colour_histogram
from .errors import KsegError
from .levels import ColourLevels, build_levels, nearest_centres
from .search import Fit, search_centres
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

_N_INIT = 5  # k-means++ initialisations per K when fitting few distinct colours directly
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
    all_nk = np.bincount(labels, weights=weights, minlength=k)
    present = np.flatnonzero(all_nk > 0)
    n_clusters = present.size
    if n_clusters < 2:
        return float("nan"), float("nan")
    n = weights.sum()
    nk = all_nk[present]
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


def _silhouette(distances: np.ndarray, labels: np.ndarray) -> float:
    """Silhouette of a labelling of the sample whose pairwise ``distances`` are given.

    scikit-learn's ``silhouette_score(distances, labels, metric="precomputed")``,
    written out because the sweep scores every K on the same fixed sample: with
    the distance matrix computed once, each K is one matrix product (per-cluster
    sums of distances), about 4x faster than scikit-learn's chunked reduction.
    ``tests/pipeline/test_sweep.py`` checks it against scikit-learn.
    """
    present, inverse = np.unique(labels, return_inverse=True)
    n = labels.size
    if present.size < 2 or present.size > n - 1:
        return float("nan")
    rows = np.arange(n)
    members = np.zeros((n, present.size))
    members[rows, inverse] = 1.0
    sums = distances @ members  # (n, clusters): summed distance to each cluster
    sizes = members.sum(axis=0)
    own = sizes[inverse]
    intra = sums[rows, inverse] / np.maximum(own - 1.0, 1.0)
    means = sums / sizes
    means[rows, inverse] = np.inf
    inter = means.min(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = (inter - intra) / np.maximum(intra, inter)
    scores[own == 1] = 0.0  # a point alone in its cluster scores 0
    return float(np.mean(np.nan_to_num(scores)))


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
    colour_features = hist.features(features)
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


def _binned(levels: ColourLevels, k: int) -> bool:
    """Whether K is searched on the bins (else fitted directly on the few distinct colours)."""
    return levels.seeds.means.shape[0] > k and levels.fine.means.shape[0] > k


def _colour_metrics(levels: ColourLevels, centres, wcss, bin_labels, n_pixels):
    """Calinski-Harabasz from the exact WCSS; Davies-Bouldin on the fine bins."""
    k = centres.shape[0]
    if k < 2:
        return float("nan"), float("nan")
    between = levels.total_ss - wcss
    ch = 1.0 if wcss <= 0 else between * (n_pixels - k) / (wcss * (k - 1))
    _, db = _weighted_indices(levels.fine.means, levels.fine.weights, bin_labels, k)
    return ch, db


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
    # threadpoolctl limits only the libraries already loaded: import scikit-learn's
    # OpenMP runtime first, or the first fits run with spinning OpenMP threads.
    import sklearn
    import sklearn.cluster
    from threadpoolctl import threadpool_limits

    # The fits run on at most a few hundred thousand points, where OpenMP and BLAS threads
    # cost more than they save, and on a busy machine scikit-learn's spinning
    # threads made the sweep 5x slower (20.8 s against 4.2 s single-threaded).
    # The engine builds every array it passes to scikit-learn (finite by construction)
    # and every parameter, so scikit-learn's per-call re-checks are skipped: about 5% of
    # the sweep on a 12-MP image, results unchanged.
    with (
        threadpool_limits(limits=1),
        sklearn.config_context(assume_finite=True, skip_parameter_validation=True),
    ):
        return _sweep(rgb, settings, colour_histogram(rgb) if hist is None else hist)


def _timed_fit(points, weights, k, seed, n_init) -> Fit:
    """K-means++ with ``n_init`` starts on the points themselves, timed."""
    from sklearn.cluster import KMeans

    started = time.perf_counter()
    model = KMeans(n_clusters=k, n_init=n_init, random_state=seed)
    model.fit(points, sample_weight=weights)
    return Fit(model.cluster_centers_, float(model.inertia_), int(model.n_iter_),
               time.perf_counter() - started)  # fmt: skip


def _fits(levels, points, weights, ks, n_distinct, spatial, seed) -> dict[int, Fit]:
    """Centres for every effective K."""
    fits: dict[int, Fit] = {}
    for k in ks:
        if k == 1:
            fits[k] = Fit(((weights @ points) / weights.sum())[None, :], float("nan"), 0, 0.0)
        elif k == n_distinct:
            fits[k] = Fit(points.copy(), 0.0, 0, 0.0)
    todo = [k for k in ks if k not in fits]
    if spatial:
        return fits | {k: _timed_fit(points, weights, k, seed, 3) for k in todo}
    binned = [k for k in todo if _binned(levels, k)]
    fits |= search_centres(levels, binned, seed)
    for k in todo:  # few distinct colours: fit them directly
        if k not in fits:
            fits[k] = _timed_fit(points, weights, k, seed, _N_INIT)
    return fits


def _sweep(rgb: np.ndarray, settings: SegmentSettings, hist: ColourHistogram) -> SweepResult:
    settings.validate()
    colour_features = hist.features(settings.features)
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
    k_values = settings.sweep_k_values
    effective = sorted({min(k, n_distinct) for k in k_values})
    fits = _fits(levels, points, weights, effective, n_distinct, spatial, settings.seed)

    def evaluate(k: int) -> tuple[float, np.ndarray | None, float]:
        started = time.perf_counter()
        wcss, bin_labels = _wcss(rgb, hist, levels, index, fits[k].centres, settings)
        return wcss, bin_labels, time.perf_counter() - started

    # Exact evaluation is array work that mostly releases the GIL: on two threads it
    # took 0.075 s instead of 0.11 s for 12 K on a 12-MP image (the results do not
    # depend on the threads; each K is evaluated on its own).
    with ThreadPoolExecutor(max_workers=2) as pool:
        exact = dict(zip(effective, pool.map(evaluate, effective), strict=True))
    centres_of, wcss_of, bin_labels_of, seconds_of = {}, {}, {}, {}
    prev, prev_wcss = None, np.inf
    for k in effective:
        centres = fits[k].centres
        wcss, bin_labels, seconds = exact[k]
        seconds += fits[k].seconds
        if prev is not None and wcss > prev_wcss:
            # A worse local minimum than K-1: the K-1 centres plus the costliest point
            # can only lower every distance, so this candidate is never above K-1.
            started = time.perf_counter()
            _, d = nearest_centres(points, prev)
            fallback = np.vstack([prev, points[np.argmax(weights * d)]])[:k]
            if fallback.shape[0] < k:
                fallback = np.vstack([fallback, centres[fallback.shape[0] :]])
            f_wcss, f_bin_labels = _wcss(rgb, hist, levels, index, fallback, settings)
            if f_wcss < wcss:
                centres, wcss, bin_labels = fallback, f_wcss, f_bin_labels
            seconds += time.perf_counter() - started
        wcss = min(wcss, prev_wcss)  # guards float rounding of equal objectives only
        centres_of[k], wcss_of[k], bin_labels_of[k], seconds_of[k] = (
            centres,
            wcss,
            bin_labels,
            seconds,
        )
        prev, prev_wcss = centres, wcss

    sil_sample = rng.choice(points.shape[0], size=SILHOUETTE_SAMPLE, p=weights / weights.sum())
    sil_points = points[sil_sample]
    from sklearn.metrics import pairwise_distances

    sil_distances = pairwise_distances(sil_points)  # once, for every K

    def metrics(k: int) -> tuple[float, float, float, float]:
        started = time.perf_counter()
        centres = centres_of[k]
        if spatial or levels is None:
            labels, _ = nearest_centres(points, centres)
            ch, db = _weighted_indices(points, weights, labels, k)
            sil_labels = labels[sil_sample]
        else:
            ch, db = _colour_metrics(levels, centres, wcss_of[k], bin_labels_of[k], hist.n_pixels)
            sil_labels = nearest_centres(sil_points, centres)[0]
        return ch, db, _silhouette(sil_distances, sil_labels), time.perf_counter() - started

    measured = {k: metrics(k) for k in effective}
    rows_out, centres_out = [], {}
    for k in k_values:
        k_eff = min(k, n_distinct)
        ch, db, sil, seconds = measured[k_eff]
        rows_out.append(
            {
                "k": k,
                "k_effective": k_eff,
                "wcss": wcss_of[k_eff],
                "silhouette": sil,
                "calinski_harabasz": ch,
                "davies_bouldin": db,
                "seconds": seconds_of[k_eff] + seconds,
                "iterations": fits[k_eff].iterations,
            }
        )
        centres_out[k] = centres_of[k_eff]
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
