"""Connected components of a label map, their pixel sums and their adjacency.

The region stage (:mod:`pipeline.regions`) starts from the K-means clusters split into
4-connected pieces. Everything it needs about the pieces is a sum over their pixels
(count, colour, position) or a pair of touching pieces; this module computes both in a
few passes over the pixels, in bounded memory (row blocks), so that the rest of the
stage works on per-component tables only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ComponentSums", "adjacent_pairs", "component_sums", "split_components"]

# Pixels per block when summing: large enough that numpy's per-call cost vanishes,
# small enough that the gathered colour values (block x channels x 8 bytes) stay small.
_BLOCK = 1 << 20


def split_components(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Split every label of a map into its 4-connected components.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        Any integer labels (e.g. K-means clusters); prior validation assumed.

    Returns
    -------
    components : (H, W) ndarray of int32
        Component of each pixel, ``0 .. n-1``, numbered in raster order of each
        component's first pixel (scikit-image's labelling order).
    n : int
        Number of components.
    """
    from skimage.measure import label as connected

    # background=-1 is a value no label has, so every pixel belongs to a component.
    components, n = connected(labels, background=-1, connectivity=1, return_num=True)
    out = np.empty(labels.shape, dtype=np.int32)
    np.subtract(components, 1, out=out, casting="unsafe")
    return out, int(n)


@dataclass(frozen=True, eq=False)
class ComponentSums:
    """Per-component pixel sums (exact).

    Attributes
    ----------
    counts : (n,) ndarray of float64
        Pixels of each component.
    values : (n, C) ndarray of float64
        Sum over each component's pixels of the ``C`` per-colour values given to
        :func:`component_sums` (e.g. RGB and Lab).
    x, y : (n,) ndarray of float64
        Sum of the pixels' column and row indices.
    """

    counts: np.ndarray
    values: np.ndarray
    x: np.ndarray
    y: np.ndarray

    def grouped(self, groups: np.ndarray, n_groups: int) -> ComponentSums:
        """The sums of unions of components: ``groups[i]`` is the union holding ``i``."""

        def add(column: np.ndarray) -> np.ndarray:
            return np.bincount(groups, weights=column, minlength=n_groups)

        values = np.column_stack([add(c) for c in self.values.T]).reshape(n_groups, -1)
        return ComponentSums(add(self.counts), values, add(self.x), add(self.y))


def component_sums(
    components: np.ndarray, n: int, colour_index: np.ndarray, colour_values: np.ndarray
) -> ComponentSums:
    """Pixel count, colour sums and position sums of each component.

    Parameters
    ----------
    components : (H, W) ndarray of int32
        Component of each pixel, ``0 .. n-1``.
    n : int
        Number of components.
    colour_index : (H, W) ndarray of int
        Index of each pixel's colour in ``colour_values``.
    colour_values : (M, C) ndarray of float64
        Values of each distinct colour to sum (e.g. its RGB and Lab).

    Returns
    -------
    ComponentSums
    """
    height, width = components.shape
    channels = colour_values.shape[1]
    # Whole rows per block; with many components a block is at least 4n pixels, so the
    # minlength-n bincounts never cost more than the block's own pixels.
    rows = max(1, min(height, max(_BLOCK, 4 * n) // max(width, 1)))
    counts = np.zeros(n)
    values = np.zeros((n, channels))
    xs = np.zeros(n)
    ys = np.zeros(n)
    column = np.arange(width, dtype=np.float64)
    for top in range(0, height, rows):
        comp = components[top : top + rows]
        flat = comp.ravel()
        gathered = colour_values[colour_index[top : top + rows].ravel()]
        counts += np.bincount(flat, minlength=n)
        for c in range(channels):
            values[:, c] += np.bincount(flat, weights=gathered[:, c], minlength=n)
        xs += np.bincount(flat, weights=np.broadcast_to(column, comp.shape).ravel(), minlength=n)
        row_ids = np.repeat(np.arange(top, top + comp.shape[0], dtype=np.float64), width)
        ys += np.bincount(flat, weights=row_ids, minlength=n)
    return ComponentSums(counts, values, xs, ys)


def adjacent_pairs(components: np.ndarray, n: int) -> np.ndarray:
    """The pairs of components that touch (4-connectivity).

    Parameters
    ----------
    components : (H, W) ndarray of int32
        Component of each pixel, ``0 .. n-1``.
    n : int

    Returns
    -------
    (E, 2) ndarray of int64
        Each touching pair once, smaller index first, sorted.
    """
    keys = []
    for a, b in (
        (components[:, :-1], components[:, 1:]),
        (components[:-1, :], components[1:, :]),
    ):
        differ = a != b
        left, right = a[differ].astype(np.int64), b[differ].astype(np.int64)
        keys.append(np.minimum(left, right) * n + np.maximum(left, right))
    unique = np.unique(np.concatenate(keys))
    return np.column_stack([unique // n, unique % n])
