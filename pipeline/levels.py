"""Coarse-to-fine colour levels for a fast, exactly evaluated K-means sweep.

The distinct colours of an image are grouped into *bins* by the top bits of each
RGB channel (6 bits: up to 262,144 bins; 5 bits: up to 32,768; 4 bits: up to
4,096). A bin is
represented by the weighted mean of its members' features, so fitting K-means
on bins optimises a close proxy of the exact objective at a fraction of the cost.

The exact WCSS at given centres is then evaluated without visiting most colours:
by the parallel-axis theorem, the members of a bin that all go to one centre ``c``
cost ``W_b * |m_b - c|^2 + S_b`` (``W_b`` total weight, ``m_b`` mean, ``S_b`` the
bin's own scatter, precomputed). A bin whose mean lies farther than the bin's
radius from the plane bisecting its nearest centre and every other centre provably
sends every member to the same centre; only the remaining *boundary* bins have
their members assigned one by one. The result equals the sum over all pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .colours import ColourHistogram

__all__ = ["ColourLevels", "build_levels", "nearest_centres", "squared_distances"]

_CHUNK = 262_144


def squared_distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances, shape (N, K), by ``|x|^2 - 2 x.c + |c|^2``.

    One matrix product instead of an (N, K, D) difference array; entries may be
    slightly negative by rounding where a point sits on a centre.

    Parameters
    ----------
    points : (N, D) ndarray of float64
    centres : (K, D) ndarray of float64
    """
    d = np.einsum("ij,ij->i", centres, centres)[None, :] - 2.0 * points @ centres.T
    d += np.einsum("ij,ij->i", points, points)[:, None]
    return d


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
    for start in range(0, points.shape[0], _CHUNK):
        d = squared_distances(points[start : start + _CHUNK], centres)
        lab = np.argmin(d, axis=1)
        labels[start : start + _CHUNK] = lab
        sqdist[start : start + _CHUNK] = np.maximum(d[np.arange(lab.size), lab], 0.0)
    return labels, sqdist


@dataclass(frozen=True)
class _Bins:
    means: np.ndarray  # (B, D) weighted mean feature of each bin
    weights: np.ndarray  # (B,) total pixel count of each bin
    inverse: np.ndarray  # (M,) bin of each distinct colour
    radius: np.ndarray  # (B,) bound on the distance of a member from the bin mean
    scatter: np.ndarray  # (B,) sum of w * |x - mean|^2 over the bin's members
    keys: np.ndarray  # (B,) the bin's RGB prefix, packed (r << 2b | g << b | b), ascending
    bits: int
    parent_of: np.ndarray | None = None  # (B_child,) this level's bin of each finer bin


def _occupied(keys: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Index of each key among the occupied keys, and the occupied keys (ascending)."""
    occupied = np.bincount(keys, minlength=1 << (3 * bits))
    present = np.flatnonzero(occupied)
    remap = np.cumsum(occupied > 0) - 1
    return remap[keys], present


def _bin(hist: ColourHistogram, points: np.ndarray, bits: int) -> _Bins:
    """Bins of the distinct colours by the top ``bits`` bits of each channel."""
    shift = 8 - bits
    c = (hist.colours >> shift).astype(np.int64)
    inverse, keys = _occupied((c[:, 0] << (2 * bits)) | (c[:, 1] << bits) | c[:, 2], bits)
    n_bins = keys.size
    w = hist.counts.astype(np.float64)
    weights = np.bincount(inverse, weights=w, minlength=n_bins)
    means = np.empty((n_bins, points.shape[1]))
    sq = np.zeros(points.shape[0])  # each colour's squared distance to its bin's mean
    for d in range(points.shape[1]):  # channel by channel: no (M, 3) temporaries
        means[:, d] = np.bincount(inverse, weights=w * points[:, d], minlength=n_bins) / weights
        offset = points[:, d] - means[inverse, d]
        offset *= offset
        sq += offset
    scatter = np.bincount(inverse, weights=w * sq, minlength=n_bins)
    radius = np.zeros(n_bins)
    np.maximum.at(radius, inverse, np.sqrt(sq))
    return _Bins(means, weights, inverse, radius, scatter, keys, bits)


def _merge(child: _Bins) -> _Bins:
    """The bins one bit coarser, built from ``child``'s bins rather than from the colours.

    Exact for weights, means and scatter (parallel-axis theorem: a parent's scatter is
    its children's plus each child's weight times its squared offset from the parent
    mean); the radius becomes the bound ``max(child radius + child offset)``, which
    is all the boundary test needs.
    """
    b, bits = child.bits, child.bits - 1
    mask = (1 << b) - 1
    r, g, bl = child.keys >> (2 * b), (child.keys >> b) & mask, child.keys & mask
    parent, keys = _occupied(((r >> 1) << (2 * bits)) | ((g >> 1) << bits) | (bl >> 1), bits)
    n_bins = keys.size
    weights = np.bincount(parent, weights=child.weights, minlength=n_bins)
    wm = child.weights[:, None] * child.means
    sums = np.column_stack(
        [np.bincount(parent, weights=wm[:, d], minlength=n_bins) for d in range(wm.shape[1])]
    )
    means = sums / weights[:, None]
    diff = child.means - means[parent]
    sq = np.einsum("ij,ij->i", diff, diff)
    scatter = np.bincount(parent, weights=child.scatter + child.weights * sq, minlength=n_bins)
    radius = np.zeros(n_bins)
    np.maximum.at(radius, parent, child.radius + np.sqrt(sq))
    return _Bins(means, weights, parent[child.inverse], radius, scatter, keys, bits, parent)


def _settled(
    bins: _Bins, which: np.ndarray | None, centres: np.ndarray, c_sq: np.ndarray, gaps
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest centre of some bins' means, its squared distance, and whether it is settled.

    A member x of a bin (|x - m| <= r) stays with the mean's nearest centre l
    against any centre j when m is farther than r from their bisecting plane:
    ``d_j - d_l > 2 r |c_j - c_l|``. A bin passing that for every j is *settled*:
    all its members go to l. The slack absorbs the rounding of the distances.
    """
    means = bins.means if which is None else bins.means[which]
    radius = bins.radius if which is None else bins.radius[which]
    d = squared_distances(means, centres)
    np.maximum(d, 0.0, out=d)
    rows = np.arange(d.shape[0])
    labels = np.argmin(d, axis=1).astype(np.int32)
    nearest = d[rows, labels]
    slack = 1e-9 * (float(d.max(initial=0.0)) + float(c_sq.max()) + 1.0)
    d -= nearest[:, None]
    d -= 2.0 * radius[:, None] * gaps[labels]
    d[rows, labels] = np.inf
    return labels, nearest, d.min(axis=1, initial=np.inf) > slack


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
        6-bit, 5-bit and 4-bit bins of the distinct colours (the coarser two built by
        merging the finer).
    total_ss : float
        Total sum of squares about the weighted mean (= WCSS at K=1), exact.
    """

    points: np.ndarray
    weights: np.ndarray
    fine: _Bins
    coarse: _Bins
    seeds: _Bins
    total_ss: float
    _fine_order: np.ndarray = field(repr=False)  # distinct colours sorted by fine bin
    _fine_start: np.ndarray = field(repr=False)  # first position of each fine bin in it
    _fine_count: np.ndarray = field(repr=False)  # distinct colours in each fine bin

    @property
    def mean(self) -> np.ndarray:
        """Weighted mean feature, shape (3,)."""
        return (self.weights @ self.points) / self.weights.sum()

    def exact_wcss(self, centres: np.ndarray) -> tuple[float, np.ndarray, float]:
        """Exact WCSS over all pixels at ``centres``, and each fine bin's centre.

        Coarse to fine: a 5-bit bin that provably goes to one centre contributes
        whole; the fine bins of the others are tested in turn, and only the members
        of fine bins on a boundary are assigned one by one.

        Returns
        -------
        wcss : float
        bin_labels : (B,) ndarray of int32
            Nearest centre of each fine bin's mean (used for cheap indices).
        boundary_share : float
            Share of distinct colours that had to be assigned one by one.
        """
        fine, coarse = self.fine, self.coarse
        if centres.shape[0] == 1:
            d = ((fine.means - centres[0]) ** 2).sum(axis=1)
            labels = np.zeros(d.shape[0], dtype=np.int32)
            return float(fine.weights @ d + fine.scatter.sum()), labels, 0.0
        c_sq = np.einsum("ij,ij->i", centres, centres)
        gaps = np.sqrt(np.maximum(squared_distances(centres, centres), 0))
        c_labels, c_near, c_safe = _settled(coarse, None, centres, c_sq, gaps)
        wcss = float(coarse.weights[c_safe] @ c_near[c_safe] + coarse.scatter[c_safe].sum())
        # Every member of a settled coarse bin, so every fine bin mean in it, goes to
        # the coarse bin's centre (a Voronoi cell is convex).
        bin_labels = c_labels[coarse.parent_of]
        open_bins = np.flatnonzero(~c_safe[coarse.parent_of])
        f_labels, f_near, f_safe = _settled(fine, open_bins, centres, c_sq, gaps)
        bin_labels[open_bins] = f_labels
        done = open_bins[f_safe]
        wcss += float(fine.weights[done] @ f_near[f_safe] + fine.scatter[done].sum())
        members = self._members(open_bins[~f_safe])
        if members.size:
            _, sq = nearest_centres(self.points[members], centres)
            wcss += float(self.weights[members] @ sq)
        return wcss, bin_labels, members.size / self.points.shape[0]

    def _members(self, bins: np.ndarray) -> np.ndarray:
        """Indices of the distinct colours in the given fine bins."""
        start, count = self._fine_start[bins], self._fine_count[bins]
        total = int(count.sum())
        if total == 0:
            return np.zeros(0, dtype=np.int64)
        # Concatenated ranges start[i] .. start[i] + count[i], without a Python loop.
        offsets = np.repeat(start - (np.cumsum(count) - count), count)
        return self._fine_order[offsets + np.arange(total)]

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
    fine = _bin(hist, points, 6)
    coarse = _merge(fine)
    order = np.argsort(fine.inverse, kind="stable")
    count = np.bincount(fine.inverse, minlength=fine.keys.size)
    start = np.cumsum(count) - count
    return ColourLevels(points, weights, fine, coarse, _merge(coarse), total, order, start, count)
