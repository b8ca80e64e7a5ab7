"""Connected components of a label map, their pixel sums, extents and adjacency.

The region stage (:mod:`pipeline.regions`) starts from the K-means clusters split into
4-connected pieces. Everything it needs about the pieces is a sum over their pixels
(count, colour, position) or a pair of touching pieces; this module computes both in a
few passes over the pixels, in bounded memory (row blocks), so that the rest of the
stage works on per-component tables only. Centroids and bounding boxes are only needed
for the final regions, so they are taken from the final label map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "ComponentSums",
    "adjacent_pairs",
    "component_sums",
    "label_extents",
    "split_components",
]

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
    """

    counts: np.ndarray
    values: np.ndarray

    def grouped(self, groups: np.ndarray, n_groups: int) -> ComponentSums:
        """The sums of unions of components: ``groups[i]`` is the union holding ``i``."""

        def add(column: np.ndarray) -> np.ndarray:
            return np.bincount(groups, weights=column, minlength=n_groups)

        values = np.column_stack([add(c) for c in self.values.T]).reshape(n_groups, -1)
        return ComponentSums(add(self.counts), values)


def _row_blocks(height: int, width: int, n: int) -> range:
    """Starts of blocks of whole rows: about ``_BLOCK`` pixels, and at least ``4 n`` so
    that a ``minlength=n`` bincount never costs more than the block's own pixels."""
    rows = max(1, min(height, max(_BLOCK, 4 * n) // max(width, 1)))
    return range(0, height, rows)


def component_sums(
    components: np.ndarray,
    n: int,
    rgb: np.ndarray,
    colour_index: np.ndarray,
    colour_values: np.ndarray,
) -> ComponentSums:
    """Pixel count, RGB sums and sums of per-colour values (e.g. Lab) of each component.

    Parameters
    ----------
    components : (H, W) ndarray of int32
        Component of each pixel, ``0 .. n-1``.
    n : int
        Number of components.
    rgb : (H, W, 3) ndarray of uint8
        The image (its channels are summed as they are, no lookup).
    colour_index : (H, W) ndarray of int
        Index of each pixel's colour in ``colour_values``.
    colour_values : (M, C) ndarray of float64
        Values of each distinct colour to sum (e.g. its Lab coordinates).

    Returns
    -------
    ComponentSums
        ``values`` holds the three RGB sums, then the ``C`` others.
    """
    from concurrent.futures import ThreadPoolExecutor

    height, width = components.shape
    columns = [np.ascontiguousarray(c) for c in np.asarray(colour_values, np.float64).T]
    starts = _row_blocks(height, width, n)
    step = starts.step

    def add_up(tops: range) -> np.ndarray:
        out = np.zeros((4 + len(columns), n))
        for top in tops:
            flat = components[top : top + step].ravel()
            out[0] += np.bincount(flat, minlength=n)
            pixels = rgb[top : top + step]
            for c in range(3):
                out[1 + c] += np.bincount(flat, weights=pixels[..., c].ravel(), minlength=n)
            index = colour_index[top : top + step].ravel()
            for c, column in enumerate(columns, start=4):
                out[c] += np.bincount(flat, weights=np.take(column, index), minlength=n)
        return out

    # numpy's bincount and take release the GIL: two threads, each summing half the
    # blocks, take about half the wall time on two cores (the same CPU time).
    halves = [starts[: len(starts) // 2], starts[len(starts) // 2 :]]
    if len(starts) < 2:
        total = add_up(starts)
    else:
        with ThreadPoolExecutor(max_workers=2) as pool:
            total = sum(pool.map(add_up, halves))
    return ComponentSums(total[0].copy(), total[1:].T.copy())


def label_extents(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Centroid and bounding box of each label, from its row and column histograms.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        Labels ``0 .. n-1`` (an absent label gets centroid 0 and an empty box).
    n : int

    Returns
    -------
    centroids : (n, 2) ndarray of float64
        Mean column (x) and row (y) of each label's pixels.
    boxes : (n, 4) ndarray of int64
        Half-open bounding boxes ``x0, y0, x1, y1``.
    """
    height, width = labels.shape
    if n * (height + width) > _BLOCK * 8:
        return _extents_by_objects(labels, n)
    rows = np.zeros((height, n), dtype=np.int64)  # pixels of each label in each row
    cols = np.zeros((width, n), dtype=np.int64)
    offsets = n * np.arange(width, dtype=np.int64)
    starts = _row_blocks(height, width, n)
    step = starts.step
    for top in starts:
        block = labels[top : top + step].astype(np.int64)
        here = block.shape[0]
        keys = block + (n * np.arange(here, dtype=np.int64))[:, None]
        rows[top : top + here] = np.bincount(keys.ravel(), minlength=here * n).reshape(here, n)
        cols += np.bincount((block + offsets).ravel(), minlength=width * n).reshape(width, n)
    counts = np.maximum(rows.sum(axis=0), 1)
    centroids = np.column_stack(
        [np.arange(width) @ cols / counts, np.arange(height) @ rows / counts]
    )
    boxes = np.column_stack(
        [
            np.argmax(cols > 0, axis=0),
            np.argmax(rows > 0, axis=0),
            width - np.argmax(cols[::-1] > 0, axis=0),
            height - np.argmax(rows[::-1] > 0, axis=0),
        ]
    ).astype(np.int64)
    return centroids, boxes


def _extents_by_objects(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`label_extents` for many labels, where per-row histograms would be large."""
    from scipy.ndimage import find_objects

    height, width = labels.shape
    boxes = np.zeros((n, 4), dtype=np.int64)
    for i, found in enumerate(find_objects(labels.astype(np.int32) + 1, max_label=n)):
        if found is not None:
            rows, cols = found
            boxes[i] = cols.start, rows.start, cols.stop, rows.stop
    flat = labels.ravel()
    counts = np.maximum(np.bincount(flat, minlength=n), 1)
    xs = np.tile(np.arange(width, dtype=np.float64), height)
    x = np.bincount(flat, weights=xs, minlength=n)
    del xs
    ys = np.repeat(np.arange(height, dtype=np.float64), width)
    y = np.bincount(flat, weights=ys, minlength=n)
    return np.column_stack([x / counts, y / counts]), boxes


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
