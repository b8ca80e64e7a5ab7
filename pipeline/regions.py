"""Turn K-means colour clusters into spatially coherent regions.

K-means on colour gives clusters scattered over the image in many specks. This stage
turns a cluster label map into regions people recognise, in four steps:

1. split every cluster into its 4-connected components (:mod:`pipeline.components`);
2. fold every component below a size floor (``min_share`` of the image) into the
   adjacent region of closest mean Lab colour (:func:`pipeline.merging.fold_small`);
3. merge adjacent regions greedily by least increase of the within-region sum of
   squares in Lab (Ward), all the way down, recording the cost of every merge: the
   *merge curve* (:func:`pipeline.merging.ward_merges`);
4. read the curve to choose how many regions to keep (:mod:`pipeline.stopping`).

Every region is 4-connected (only touching regions are ever merged), labels are
``0 .. n-1`` in raster order of each region's first pixel, and the result depends on
nothing but the inputs and the settings.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .colours import ColourHistogram, colour_histogram, lookup
from .components import (
    ComponentSums,
    adjacent_pairs,
    component_owners,
    component_sums,
    label_extents,
    split_components,
)
from .merging import MergeSequence, cut, fold_small, unique_pairs, ward_merges
from .render import SEGMENT_COLUMNS
from .settings import RegionSettings
from .stopping import StopChoice, choose_stop, gap_strengths

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "MERGE_COLUMNS",
    "REGION_COLUMNS",
    "MergeCurve",
    "RegionHierarchy",
    "Regions",
    "find_regions",
    "merges_to_arrow",
    "region_hierarchy",
]

#: Columns of :attr:`Regions.table`, in order.
#: The same statistics as a segment's (:data:`pipeline.render.SEGMENT_COLUMNS`), with
#: the region's number first and the cluster it came from last.
REGION_COLUMNS = ("region", *SEGMENT_COLUMNS[1:-1], "cluster")
#: Columns of :meth:`Regions.merge_table`, in order.
MERGE_COLUMNS = (
    "regions", "wcss", "merge_cost", "cost_per_pixel", "cost_share", "strength", "chosen",
)  # fmt: skip


@dataclass(frozen=True, eq=False)
class MergeCurve:
    """How the within-region sum of squares grows as regions are merged.

    Attributes
    ----------
    n_start : int
        Regions after folding, before the first Ward merge.
    regions : (M,) ndarray of int64
        Regions left after each merge: ``n_start - 1`` down to 1.
    costs : (M,) ndarray of float64
        Increase of the within-region sum of squares (Lab units squared, summed
        over pixels) by each merge.
    wcss_start : float
        Within-region sum of squares of the folded regions.
    total_ss : float
        Sum of squares of all pixels about the image's mean colour (the WCSS of one
        region); ``costs / total_ss`` is the share of the image's variance a merge adds.
    pixels : int
        Pixels of the image; ``costs / pixels`` is the cost per pixel the stopping
        rule reads (:mod:`pipeline.stopping`).
    """

    n_start: int
    regions: np.ndarray
    costs: np.ndarray
    wcss_start: float
    total_ss: float
    pixels: int

    @property
    def cost_per_pixel(self) -> np.ndarray:
        """(M,) ndarray of float64: each merge's cost divided by the image's pixels."""
        return self.costs / max(self.pixels, 1)

    @property
    def wcss(self) -> np.ndarray:
        """(M,) ndarray of float64: within-region sum of squares after each merge."""
        return self.wcss_start + np.cumsum(self.costs)


@dataclass(frozen=True, eq=False)
class Regions:
    """The regions of one image.

    Attributes
    ----------
    labels : (H, W) ndarray of uint8 (uint16 above 256 regions)
        Region of each pixel, exactly ``0 .. n_regions-1``, in raster order of each
        region's first pixel; every region is 4-connected.
    n_regions : int
    table : pandas.DataFrame
        One row per region, columns :data:`REGION_COLUMNS`: pixel count, share of the
        image, mean RGB and Lab, centroid, half-open bounding box and the K-means
        cluster the region's largest component came from.
    curve : MergeCurve
    choice : StopChoice
        Where the merging stopped and why (count, rule, strength, reason).
    n_components : int
        Connected components of the clusters before folding.
    n_folded : int
        Regions after folding (the start of the merge curve).
    cluster_pieces : (K,) ndarray of int64
        Connected components of each cluster ``0 .. K-1`` of the clustering the regions
        started from (K its largest label plus one): the segment table's
        ``n_components`` when that clustering is the segmentation's.
    seconds : dict of str to float
        Wall time of building the hierarchy (``hierarchy``: components, folding,
        merges) and of the rest (``labels``: stop, label map, table).
    """

    labels: np.ndarray
    n_regions: int
    table: pd.DataFrame
    curve: MergeCurve
    choice: StopChoice
    n_components: int
    n_folded: int
    cluster_pieces: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict, compare=False)

    def merge_table(self) -> pd.DataFrame:
        """The merge curve as a table, one row per stopping point, the chosen one marked.

        Returns
        -------
        pandas.DataFrame
            Columns :data:`MERGE_COLUMNS`, one row per region count from
            ``n_folded`` down to the last merge's: ``regions`` kept, the ``wcss``
            (within-region sum of squares, Lab) with that many, the ``merge_cost``
            the next merge (to one region fewer) would add, that cost per pixel and
            as a share of the total sum of squares (NaN on the last row: nothing is
            left to merge), the ``strength`` of stopping there
            (:func:`pipeline.stopping.gap_strengths`; 1 on the last row) and
            ``chosen`` (True on the kept count's row only).
        """
        c = self.curve
        n = c.costs.size
        cost = np.append(c.costs, np.nan)
        per_pixel = np.append(c.cost_per_pixel, np.nan)
        share = cost / c.total_ss if c.total_ss > 0 else np.where(np.isnan(cost), np.nan, 0.0)
        regions = c.n_start - np.arange(n + 1, dtype=np.int64)
        return pd.DataFrame(
            {
                "regions": regions,
                "wcss": np.concatenate([[c.wcss_start], c.wcss]),
                "merge_cost": cost,
                "cost_per_pixel": per_pixel,
                "cost_share": share,
                "strength": np.append(gap_strengths(c.cost_per_pixel), 1.0),
                "chosen": regions == self.n_regions,
            },
            columns=list(MERGE_COLUMNS),
        )


@dataclass(frozen=True, eq=False)
class RegionHierarchy:
    """Steps 1-3 of :func:`find_regions`: the folded regions and every Ward merge.

    Attributes
    ----------
    components : (H, W) ndarray of int32
        Connected component of each pixel (raster order).
    n_components : int
    folded : (n_components,) ndarray of int64
        Folded region of each component, ``0 .. curve.n_start-1``.
    sums : ComponentSums
        Pixel sums (RGB then Lab, position) of each component.
    owner : (n_components,) ndarray of int64
        K-means cluster of each component.
    sequence : MergeSequence
    curve : MergeCurve
    """

    components: np.ndarray
    n_components: int
    folded: np.ndarray
    sums: ComponentSums
    owner: np.ndarray
    sequence: MergeSequence
    curve: MergeCurve

    def groups(self, n_regions: int) -> np.ndarray:
        """(curve.n_start,) ndarray of int64: the region of each folded region when
        merging stops at ``n_regions`` (numbered by smallest folded region)."""
        return cut(self.sequence, n_regions)[0]

    def folded_labels(self) -> np.ndarray:
        """(H, W) ndarray of int64: the folded region of every pixel."""
        return lookup(self.folded, self.components)


def _check(rgb: np.ndarray, clusters: np.ndarray) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be an (H, W, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
    if clusters.shape != rgb.shape[:2]:
        raise ValueError(
            f"clusters has shape {clusters.shape}, the image {rgb.shape[:2]}; they must match"
        )
    if not np.issubdtype(clusters.dtype, np.integer):
        raise ValueError(f"clusters must hold integer labels, got dtype {clusters.dtype}")


def _hierarchy(
    rgb: np.ndarray, clusters: np.ndarray, settings: RegionSettings, hist: ColourHistogram
) -> RegionHierarchy:
    components, n = split_components(clusters)
    index = hist.pixel_index(rgb)
    lab = hist.features("lab")
    # The adjacency pass runs on a thread beside the sums (numpy releases the GIL).
    with ThreadPoolExecutor(max_workers=1) as pool:
        touching = pool.submit(adjacent_pairs, components, n)
        sums = component_sums(components, n, rgb, index, lab)
        del index
        # The cluster of each component: every pixel of a component has the same one.
        owner = component_owners(components, clusters, n)
        pairs = touching.result()
    floor = settings.min_share * clusters.size
    folded, m = fold_small(sums.counts, sums.values[:, 3:] / sums.counts[:, None], pairs, floor)
    group = sums.grouped(folded, m)
    means = group.values[:, 3:] / group.counts[:, None]
    sequence = ward_merges(group.counts, means, unique_pairs(folded[pairs], m))
    square = float(hist.counts @ np.einsum("ij,ij->i", lab, lab))
    wcss_start = square - float(group.counts @ np.einsum("ij,ij->i", means, means))
    mean_all = group.values[:, 3:].sum(axis=0) / clusters.size
    total_ss = square - clusters.size * float(mean_all @ mean_all)
    curve = MergeCurve(
        n_start=m,
        regions=sequence.regions,
        costs=sequence.costs,
        wcss_start=max(wcss_start, 0.0),
        total_ss=max(total_ss, 0.0),
        pixels=int(clusters.size),
    )
    return RegionHierarchy(components, n, folded, sums, owner, sequence, curve)


def region_hierarchy(
    rgb: np.ndarray,
    clusters: np.ndarray,
    settings: RegionSettings | None = None,
    *,
    hist: ColourHistogram | None = None,
) -> RegionHierarchy:
    """Steps 1-3 of :func:`find_regions` (no stopping rule), e.g. to study the curve.

    Parameters and errors as :func:`find_regions`; only ``settings.min_share`` is used.
    """
    settings = RegionSettings() if settings is None else settings
    settings.validate()
    _check(rgb, clusters)
    hist = colour_histogram(rgb) if hist is None else hist
    return _hierarchy(rgb, clusters, settings, hist)


def _table(
    hierarchy: RegionHierarchy, regions: np.ndarray, n: int, shape: tuple[int, int]
) -> pd.DataFrame:
    sums = hierarchy.sums.grouped(regions, n)
    counts = sums.counts
    mean = sums.values / counts[:, None]
    # The cluster of each region: that of its largest component.
    by_size = np.lexsort((-hierarchy.sums.counts, regions))
    first = np.ones(by_size.size, dtype=bool)
    first[1:] = regions[by_size[1:]] != regions[by_size[:-1]]
    cluster = hierarchy.owner[by_size[first]]
    frame = {
        "region": np.arange(n, dtype=np.int64),
        "pixel_count": counts.astype(np.int64),
        "share": counts / (shape[0] * shape[1]),
        "mean_r": mean[:, 0], "mean_g": mean[:, 1], "mean_b": mean[:, 2],
        "mean_lab_l": mean[:, 3], "mean_lab_a": mean[:, 4], "mean_lab_b": mean[:, 5],
        "cluster": cluster,
    }  # fmt: skip
    return pd.DataFrame(frame)


def find_regions(
    rgb: np.ndarray,
    clusters: np.ndarray,
    settings: RegionSettings | None = None,
    *,
    hist: ColourHistogram | None = None,
) -> Regions:
    """Turn a K-means label map into connected regions.

    Parameters
    ----------
    rgb : (H, W, 3) ndarray of uint8
        The image.
    clusters : (H, W) ndarray of int
        K-means cluster of each pixel (any integer labels).
    settings : RegionSettings, optional
        Size floor and stopping rule; the defaults when omitted.
    hist : ColourHistogram, optional
        The colour histogram of ``rgb``, if the caller already has it.

    Returns
    -------
    Regions

    Raises
    ------
    ValueError
        If ``rgb`` is not an (H, W, 3) uint8 image or ``clusters`` is not an integer
        map of the same height and width.
    SettingsError
        If a setting is invalid (naming it).
    """
    import time

    settings = RegionSettings() if settings is None else settings
    t0 = time.perf_counter()
    graph = region_hierarchy(rgb, clusters, settings, hist=hist)
    t1 = time.perf_counter()
    choice = choose_stop(graph.curve, settings)
    grouped, n = cut(graph.sequence, choice.n_regions)
    regions = grouped[graph.folded]
    # Number regions in raster order of their first pixel: components already are, so
    # a region's first pixel is that of its smallest component.
    first = np.full(n, graph.n_components, dtype=np.int64)
    np.minimum.at(first, regions, np.arange(graph.n_components))
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(first)] = np.arange(n)
    regions = rank[regions]
    dtype = np.uint8 if n <= 256 else np.uint16
    labels = lookup(regions.astype(dtype), graph.components)
    table = _table(graph, regions, n, clusters.shape)
    centroids, boxes = label_extents(labels, n)
    table["centroid_x"], table["centroid_y"] = centroids[:, 0], centroids[:, 1]
    for j, name in enumerate(("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")):
        table[name] = boxes[:, j]
    t2 = time.perf_counter()
    return Regions(
        labels=labels,
        n_regions=n,
        table=table[list(REGION_COLUMNS)],
        curve=graph.curve,
        choice=choice,
        n_components=graph.n_components,
        n_folded=graph.curve.n_start,
        cluster_pieces=np.bincount(graph.owner, minlength=int(clusters.max()) + 1),
        seconds={"hierarchy": t1 - t0, "labels": t2 - t1},
    )


def merges_to_arrow(regions: Regions) -> pa.Table:
    """The merge curve of :meth:`Regions.merge_table` as an Arrow table (for Parquet)."""
    import pyarrow as pa

    return pa.Table.from_pandas(regions.merge_table(), preserve_index=False)
