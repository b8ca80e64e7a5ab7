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
    "component_owners",
    "component_sums",
    "label_extents",
    "split_components",
]

# Pixels per block when summing: large enough that numpy's per-call cost vanishes,
# small enough that the gathered colour values (block x channels x 8 bytes) stay small.
_BLOCK = 1 << 20
# Pixels per strip labelled at once by :func:`split_components`.
_STRIP = 1 << 22


def split_components(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Split every label of a map into its 4-connected components.

    scikit-image labels strips of about ``_STRIP`` pixels, one at a time, and the pieces
    that continue across a seam between two strips are then joined (a union over the
    pairs of pixels facing each other across the seam, with the same label). Labelling
    the whole map at once holds its 8-byte output and union-find forest for every pixel,
    17 bytes per pixel beside the 4-byte result: 1.7 GB at 100 megapixels.

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

    height, width = labels.shape
    rows = max(1, _STRIP // max(width, 1))
    out = np.empty(labels.shape, dtype=np.int32)
    n = 0
    for top in range(0, height, rows):
        # background=-1 is a value no label has, so every pixel belongs to a component.
        strip, found = connected(
            labels[top : top + rows], background=-1, connectivity=1, return_num=True
        )
        np.add(strip, n - 1, out=out[top : top + rows], casting="unsafe")
        n += int(found)
    if height <= rows:
        return out, n
    seams = np.arange(rows, height, rows)
    above, below = out[seams - 1], out[seams]
    joined = labels[seams - 1] == labels[seams]
    renumber, n = _join(above[joined], below[joined], n)
    if renumber is not None:
        for start in range(0, out.size, _BLOCK):
            flat = out.reshape(-1)[start : start + _BLOCK]
            np.take(renumber, flat, out=flat, mode="clip")
    return out, n


def _join(a: np.ndarray, b: np.ndarray, n: int) -> tuple[np.ndarray | None, int]:
    """New numbers of ``n`` pieces once each ``a[i]`` is joined with ``b[i]``.

    A joined component takes the place of its smallest piece: pieces are numbered in
    raster order of their first pixels, so the smallest piece holds the component's
    first pixel and the new numbers keep scikit-image's raster order. ``None`` when
    nothing is joined.
    """
    if a.size == 0:
        return None, n
    from scipy.sparse import coo_array
    from scipy.sparse.csgraph import connected_components

    graph = coo_array((np.ones(a.size, dtype=np.int8), (a, b)), shape=(n, n))
    m, group = connected_components(graph, directed=False)
    # np.unique's first indices: the smallest piece of each group, in group order.
    _, smallest = np.unique(group, return_index=True)
    rank = np.empty(m, dtype=np.int32)
    rank[np.argsort(smallest)] = np.arange(m, dtype=np.int32)
    return rank[group], int(m)


def component_owners(components: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """The label of each component (every pixel of a component has the same one).

    Parameters
    ----------
    components : (H, W) ndarray of int32
        :func:`split_components` of ``labels``.
    labels : (H, W) ndarray of int
    n : int
        Number of components.

    Returns
    -------
    (n,) ndarray of int64
    """
    owner = np.zeros(n, dtype=np.int64)
    flat_components, flat_labels = components.reshape(-1), labels.reshape(-1)
    # In blocks: a whole-image scatter first converts the components to an 8-byte index.
    for start in range(0, flat_components.size, _BLOCK):
        stop = start + _BLOCK
        owner[flat_components[start:stop]] = flat_labels[start:stop]
    return owner


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
    height, width = components.shape
    keys = []
    rows = max(2, _BLOCK // max(width, 1))
    # Row blocks overlapping by one row, so that every vertical pair is in one block:
    # the masks and the gathered pairs of a whole image would be several bytes per pixel.
    for top in range(0, max(height - 1, 1), rows - 1):
        block = components[top : top + rows]
        for a, b in ((block[:, :-1], block[:, 1:]), (block[:-1, :], block[1:, :])):
            differ = a != b
            left, right = a[differ].astype(np.int64), b[differ].astype(np.int64)
            keys.append(np.unique(np.minimum(left, right) * n + np.maximum(left, right)))
    unique = np.unique(np.concatenate(keys)) if keys else np.empty(0, dtype=np.int64)
    return np.column_stack([unique // n, unique % n])
