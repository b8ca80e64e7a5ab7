"""Coarse-to-fine colour levels for a fast, exactly evaluated K-means sweep.

The distinct colours of an image are grouped into *bins* by the top bits of each
RGB channel (6 bits: up to 262,144 bins; 5 bits: up to 32,768; 4 bits: up to
4,096). A bin is
represented by the weighted mean of its members' features, so fitting K-means
on bins optimises a close proxy of the exact objective at a fraction of the cost.

The exact WCSS at given centres is then evaluated without visiting most colours:
by the parallel-axis theorem, the members of a bin that all go to one centre ``c``
cost ``W_b * |m_b - c|^2 + S_b`` (``W_b`` total weight, ``m_b`` mean, ``S_b`` the
bin's own scatter, precomputed). A bin whose mean is nearer its closest centre than
its second closest by more than twice the bin's radius provably sends every member
to the same centre (triangle inequality); only the remaining *boundary* bins have
their members assigned one by one. The result equals the sum over all pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .colours import ColourHistogram

__all__ = ["ColourLevels", "build_levels", "nearest_centres"]

_CHUNK = 262_144


def nearest_centres(points: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of and squared distance to each point's nearest centre, in bounded memory.

    Written out because scikit-learn's ``pairwise_distances_argmin_min`` returns
    square-rooted distances and we need exact squared ones for WCSS.

    Parameters
    ----------
    points : (N, D) ndarray of float64
    centres : (K, D) ndarray of float64

    Returns
    -------
    labels : (N,) ndarray of int32
    sqdist : (N,) ndarray of float64
    """
    labels = np.empty(points.shape[0], dtype=np.int32)
    sqdist = np.empty(points.shape[0], dtype=np.float64)
    c_sq = np.einsum("ij,ij->i", centres, centres)
    for start in range(0, points.shape[0], _CHUNK):
        block = points[start : start + _CHUNK]
        d = c_sq[None, :] - 2.0 * block @ centres.T
        d += np.einsum("ij,ij->i", block, block)[:, None]
        lab = np.argmin(d, axis=1)
        labels[start : start + _CHUNK] = lab
        sqdist[start : start + _CHUNK] = np.maximum(d[np.arange(lab.size), lab], 0.0)
    return labels, sqdist


@dataclass(frozen=True)
class _Bins:
    means: np.ndarray  # (B, D) weighted mean feature of each bin
    weights: np.ndarray  # (B,) total pixel count of each bin
    inverse: np.ndarray  # (M,) bin of each distinct colour
    radius: np.ndarray  # (B,) max distance of a member from the bin mean
    scatter: np.ndarray  # (B,) sum of w * |x - mean|^2 over the bin's members


def _bin(hist: ColourHistogram, points: np.ndarray, bits: int) -> _Bins:
    shift = 8 - bits
    c = (hist.colours >> shift).astype(np.int64)
    key = (c[:, 0] << (2 * bits)) | (c[:, 1] << bits) | c[:, 2]
    occupied = np.bincount(key, minlength=1 << (3 * bits))
    remap = np.cumsum(occupied > 0) - 1
    inverse = remap[key]
    n_bins = int(remap[-1]) + 1
    w = hist.counts.astype(np.float64)
    weights = np.bincount(inverse, weights=w, minlength=n_bins)
    sums = np.column_stack(
        [np.bincount(inverse, weights=w * points[:, d], minlength=n_bins) for d in range(3)]
    )
    means = sums / weights[:, None]
    diff = points - means[inverse]
    sq = np.einsum("ij,ij->i", diff, diff)
    scatter = np.bincount(inverse, weights=w * sq, minlength=n_bins)
    radius = np.zeros(n_bins)
    np.maximum.at(radius, inverse, np.sqrt(sq))
    return _Bins(means, weights, inverse, radius, scatter)


@dataclass(frozen=True)
class ColourLevels:
    """Distinct colours (exact level) with a fine and a coarse binned level.

    Attributes
    ----------
    points : (M, 3) ndarray of float64
        Features of the distinct colours.
    weights : (M,) ndarray of float64
        Pixel count of each distinct colour.
    fine, coarse, seeds : _Bins
        6-bit, 5-bit and 4-bit bins of the distinct colours.
    total_ss : float
        Total sum of squares about the weighted mean (= WCSS at K=1), exact.
    """

    points: np.ndarray
    weights: np.ndarray
    fine: _Bins
    coarse: _Bins
    seeds: _Bins
    total_ss: float

    @property
    def mean(self) -> np.ndarray:
        """Weighted mean feature, shape (3,)."""
        return (self.weights @ self.points) / self.weights.sum()

    def exact_wcss(self, centres: np.ndarray) -> tuple[float, np.ndarray, float]:
        """Exact WCSS over all pixels at ``centres``, and each fine bin's centre.

        Returns
        -------
        wcss : float
        bin_labels : (B,) ndarray of int32
            Nearest centre of each fine bin's mean (used for cheap indices).
        boundary_share : float
            Share of distinct colours that had to be assigned one by one.
        """
        bins = self.fine
        k = centres.shape[0]
        d = (bins.means**2).sum(axis=1)[:, None] - 2.0 * bins.means @ centres.T
        d += (centres**2).sum(axis=1)[None, :]
        np.maximum(d, 0.0, out=d)
        if k == 1:
            labels = np.zeros(d.shape[0], dtype=np.int32)
            return float(bins.weights @ d[:, 0] + bins.scatter.sum()), labels, 0.0
        two = np.partition(d, 1, axis=1)[:, :2]
        labels = np.argmin(d, axis=1).astype(np.int32)
        gap = np.sqrt(np.maximum(two[:, 1], 0)) - np.sqrt(np.maximum(two[:, 0], 0))
        safe = gap > 2.0 * bins.radius * (1 + 1e-9) + 1e-9
        wcss = float(bins.weights[safe] @ two[safe, 0] + bins.scatter[safe].sum())
        members = ~safe[bins.inverse]
        if members.any():
            _, sq = nearest_centres(self.points[members], centres)
            wcss += float(self.weights[members] @ sq)
        return wcss, labels, float(members.mean())

    def labels(self, centres: np.ndarray) -> np.ndarray:
        """Nearest centre of every distinct colour, shape (M,), int32."""
        return nearest_centres(self.points, centres)[0]


def build_levels(hist: ColourHistogram, points: np.ndarray) -> ColourLevels:
    """Build the exact, fine (6-bit), coarse (5-bit) and seed (4-bit) levels.

    Parameters
    ----------
    hist : ColourHistogram
    points : (M, 3) ndarray of float64
        Features of ``hist.colours`` (any colour space; bins are taken in RGB).

    Returns
    -------
    ColourLevels
    """
    weights = hist.counts.astype(np.float64)
    mean = (weights @ points) / weights.sum()
    diff = points - mean
    total = float(weights @ np.einsum("ij,ij->i", diff, diff))
    return ColourLevels(
        points, weights, _bin(hist, points, 6), _bin(hist, points, 5), _bin(hist, points, 4), total
    )
