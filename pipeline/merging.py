"""Merge adjacent regions: fold the small ones away, then Ward's greedy merging.

Both steps work on a region adjacency graph given as per-region counts and mean
colours plus the list of touching pairs (:mod:`pipeline.components`); no pixel is read.

*Folding.* Every region below a size floor is merged into the adjacent region whose
mean colour is closest (Euclidean, in the features given, normally CIE Lab). All small
regions move at once: each points at its chosen neighbour and every connected group of
pointers becomes one region; repeated until no region is below the floor. A group holds
at most one region at or above the floor (each small region points at exactly one
other), so folding never merges two large regions with each other.

*Ward merging.* Merging regions ``a`` and ``b`` raises the within-region sum of squares
(the K-means objective restricted to connected regions) by exactly
``n_a n_b / (n_a + n_b) |m_a - m_b|^2`` (Ward, 1963). The adjacent pair of least
increase is merged, repeatedly, down to one region per connected image; the merges and
their costs are the *merge curve* from which :mod:`pipeline.stopping` picks where to stop.

Written by hand: scikit-image's ``graph.merge_hierarchical`` stops at a threshold and
returns only the final labels (no merge sequence to read a curve from, and a networkx
graph per image), and scikit-learn's connectivity-constrained Ward tree clusters unit
samples, not regions with sizes. A heap over a few hundred regions is a few milliseconds.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

__all__ = ["MergeSequence", "cut", "fold_small", "unique_pairs", "ward_merges"]


def unique_pairs(pairs: np.ndarray, n: int) -> np.ndarray:
    """Distinct unordered pairs of ``0 .. n-1`` without self-pairs, smaller first, sorted.

    Parameters
    ----------
    pairs : (E, 2) ndarray of int64
    n : int

    Returns
    -------
    (F, 2) ndarray of int64
    """
    a, b = pairs[:, 0], pairs[:, 1]
    keep = a != b
    lo, hi = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
    keys = np.unique(lo * n + hi)
    return np.column_stack([keys // n, keys % n])


def fold_small(
    counts: np.ndarray, means: np.ndarray, pairs: np.ndarray, floor: float
) -> tuple[np.ndarray, int]:
    """Merge every region smaller than ``floor`` pixels into its closest-coloured neighbour.

    Parameters
    ----------
    counts : (n,) ndarray of float64
        Pixels of each region.
    means : (n, D) ndarray of float64
        Mean feature (colour) of each region.
    pairs : (E, 2) ndarray of int64
        Touching regions, as :func:`pipeline.components.adjacent_pairs` gives them.
    floor : float
        Size floor in pixels.

    Returns
    -------
    groups : (n,) ndarray of int64
        The folded region of each input region, ``0 .. m-1``.
    m : int
        Number of folded regions. A region with no neighbour stays as it is, so a
        region below the floor remains only when it is alone in the image.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = counts.size
    groups = np.arange(n, dtype=np.int64)
    counts, sums, m = counts.astype(np.float64), means * counts[:, None], n
    while True:
        small = counts < floor
        if not small.any() or pairs.size == 0:
            return groups, m
        # Each touching pair in both directions, from a small region to a neighbour.
        src = np.concatenate([pairs[:, 0], pairs[:, 1]])
        dst = np.concatenate([pairs[:, 1], pairs[:, 0]])
        keep = small[src]
        src, dst = src[keep], dst[keep]
        mean = sums / counts[:, None]
        distance = np.einsum("ij,ij->i", mean[src] - mean[dst], mean[src] - mean[dst])
        # The closest neighbour of each small region; ties go to the lower index.
        order = np.lexsort((dst, distance, src))
        first = np.ones(order.size, dtype=bool)
        first[1:] = src[order[1:]] != src[order[:-1]]
        chosen_src, chosen_dst = src[order[first]], dst[order[first]]
        graph = coo_matrix((np.ones(chosen_src.size), (chosen_src, chosen_dst)), shape=(m, m))
        m, merged = connected_components(graph, directed=False)
        merged = merged.astype(np.int64)
        groups = merged[groups]
        counts = np.bincount(merged, weights=counts, minlength=m)
        sums = np.column_stack(
            [np.bincount(merged, weights=s, minlength=m) for s in sums.T]
        ).reshape(m, -1)
        pairs = unique_pairs(merged[pairs], m)


@dataclass(frozen=True, eq=False)
class MergeSequence:
    """Ward's greedy merges of a region adjacency graph, cheapest first.

    Attributes
    ----------
    n_start : int
        Regions before the first merge.
    merged : (M, 2) ndarray of int64
        The two nodes merged at each step. Nodes ``0 .. n_start-1`` are the input
        regions; the merge at step ``i`` creates node ``n_start + i`` (as in
        scipy's linkage matrices).
    costs : (M,) ndarray of float64
        Increase of the within-region sum of squares at each merge.
    """

    n_start: int
    merged: np.ndarray
    costs: np.ndarray

    @property
    def regions(self) -> np.ndarray:
        """(M,) ndarray of int64: the number of regions left after each merge."""
        return self.n_start - 1 - np.arange(self.costs.size, dtype=np.int64)


def ward_merges(counts: np.ndarray, means: np.ndarray, pairs: np.ndarray) -> MergeSequence:
    """Merge adjacent regions greedily by least increase of the within-region SSE.

    Parameters
    ----------
    counts : (n,) ndarray of float64
        Pixels of each region (all positive).
    means : (n, D) ndarray of float64
        Mean feature of each region.
    pairs : (E, 2) ndarray of int64
        Touching regions.

    Returns
    -------
    MergeSequence
        Down to one region per connected part of the graph (one for an image).
        Equal costs are broken by the smaller node indices, so the result is
        deterministic.
    """
    n = counts.size
    size = list(map(float, counts))
    mean = [np.asarray(row, dtype=np.float64) for row in means]
    neighbours: list[set[int]] = [set() for _ in range(n)]
    for a, b in pairs.tolist():
        neighbours[a].add(b)
        neighbours[b].add(a)

    def cost(a: int, b: int) -> float:
        d = mean[a] - mean[b]
        return size[a] * size[b] / (size[a] + size[b]) * float(d @ d)

    heap = [(cost(a, b), a, b) for a, b in pairs.tolist()]
    heapq.heapify(heap)
    alive = [True] * n
    merged, costs = [], []
    while heap:
        c, a, b = heapq.heappop(heap)
        if not (alive[a] and alive[b]):
            continue
        new = len(size)
        alive[a] = alive[b] = False
        alive.append(True)
        total = size[a] + size[b]
        mean.append((mean[a] * size[a] + mean[b] * size[b]) / total)
        size.append(total)
        around = (neighbours[a] | neighbours[b]) - {a, b}
        neighbours.append(around)
        for other in around:
            neighbours[other] -= {a, b}
            neighbours[other].add(new)
            heapq.heappush(heap, (cost(other, new), other, new))
        merged.append((a, b))
        costs.append(c)
    return MergeSequence(
        n_start=n,
        merged=np.array(merged, dtype=np.int64).reshape(-1, 2),
        costs=np.array(costs, dtype=np.float64),
    )


def cut(sequence: MergeSequence, n_regions: int) -> tuple[np.ndarray, int]:
    """The regions left after merging down to ``n_regions``.

    Parameters
    ----------
    sequence : MergeSequence
    n_regions : int
        Between the number of regions after the last merge and ``n_start``.

    Returns
    -------
    groups : (n_start,) ndarray of int64
        The region of each input region, ``0 .. n_regions-1``, numbered in the
        order of each region's smallest input region.
    n_regions : int
    """
    n = sequence.n_start
    steps = n - n_regions
    parent = np.arange(n + steps, dtype=np.int64)
    for i, (a, b) in enumerate(sequence.merged[:steps].tolist()):
        parent[a] = parent[b] = n + i
    # Merges only ever point to later nodes, so resolving from the last node down
    # gives every node its root in one pass.
    for node in range(n + steps - 1, -1, -1):
        parent[node] = parent[parent[node]]
    roots = parent[:n]
    _, first = np.unique(roots, return_index=True)
    rank = np.empty(n + steps, dtype=np.int64)
    rank[roots[np.sort(first)]] = np.arange(first.size)
    return rank[roots], int(first.size)
