"""The whole engine for one image: sweep K, choose K, segment."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .colours import ColourHistogram, colour_histogram
from .elbow import ElbowChoice, choose_k
from .regions import Regions, find_regions
from .render import Segmentation, segment
from .settings import RegionSettings, SegmentSettings
from .sweep import SweepResult, sweep

__all__ = [
    "SegmentationResult",
    "centres_for",
    "choose_for_sweep",
    "image_regions",
    "region_clusters",
    "segment_image",
]


@dataclass(frozen=True, eq=False)
class SegmentationResult:
    """Sweep, choice and segmentation of one image.

    Attributes
    ----------
    sweep : SweepResult
    choice : ElbowChoice
    segmentation : Segmentation
    hist : ColourHistogram
        The image's colour histogram (reusable, e.g. by :func:`segment_table`).
    seconds : dict of str to float
        Wall time of each stage (``sweep``, ``choice``, ``segment``).
    """

    sweep: SweepResult
    choice: ElbowChoice
    segmentation: Segmentation
    hist: ColourHistogram = field(repr=False)
    seconds: dict[str, float] = field(default_factory=dict)


def choose_for_sweep(result: SweepResult, settings: SegmentSettings) -> ElbowChoice:
    """Choose K from a sweep, capping K at the distinct points the sweep found."""
    n_distinct = int(result.table["k_effective"].max())
    saturated = bool((result.table["k_effective"] < result.table["k"]).any())
    return choose_k(
        result.k_values, result.wcss, settings, n_distinct=n_distinct if saturated else None
    )


def centres_for(result: SweepResult, k: int) -> np.ndarray:
    """The centres the sweep found for ``k`` clusters (or for a K capped to ``k``).

    Raises
    ------
    KeyError
        If no swept K produced ``k`` clusters.
    """
    rows = result.table.loc[result.table["k_effective"] == k, "k"]
    if rows.empty:
        raise KeyError(f"the sweep has no fit with {k} clusters (swept {result.k_values})")
    return result.centres[int(rows.iloc[0])]


def segment_image(rgb: np.ndarray, settings: SegmentSettings) -> SegmentationResult:
    """Sweep K, choose K at the elbow (or as configured) and segment the image.

    Parameters
    ----------
    rgb : (H, W, 3) ndarray of uint8
    settings : SegmentSettings

    Returns
    -------
    SegmentationResult
    """
    settings.validate()
    t0 = time.perf_counter()
    hist = colour_histogram(rgb)
    result = sweep(rgb, settings, hist=hist)
    t1 = time.perf_counter()
    choice = choose_for_sweep(result, settings)
    t2 = time.perf_counter()
    segmentation = segment(rgb, centres_for(result, choice.k), settings, hist=hist)
    t3 = time.perf_counter()
    return SegmentationResult(
        sweep=result,
        choice=choice,
        segmentation=segmentation,
        hist=hist,
        seconds={"sweep": t1 - t0, "choice": t2 - t1, "segment": t3 - t2},
    )


def region_clusters(
    rgb: np.ndarray,
    result: SweepResult,
    chosen_labels: np.ndarray,
    settings: SegmentSettings,
    region_settings: RegionSettings,
    *,
    hist: ColourHistogram | None = None,
) -> np.ndarray:
    """The K-means label map the regions start from (``region_settings.source``).

    Parameters
    ----------
    rgb : (H, W, 3) ndarray of uint8
    result : SweepResult
        The image's sweep (its centres give the finest clustering).
    chosen_labels : (H, W) ndarray of int
        The segmentation's labels at the chosen K (:attr:`Segmentation.labels`).
    settings : SegmentSettings
    region_settings : RegionSettings
    hist : ColourHistogram, optional

    Returns
    -------
    (H, W) ndarray of int
        ``chosen_labels`` itself for ``source="chosen"``; for ``"finest"``, the labels
        of the sweep's largest K.
    """
    if region_settings.source == "chosen":
        return chosen_labels
    finest = int(result.table["k_effective"].max())
    return segment(rgb, centres_for(result, finest), settings, hist=hist).labels


def image_regions(
    rgb: np.ndarray,
    result: SegmentationResult,
    settings: SegmentSettings,
    region_settings: RegionSettings,
) -> Regions:
    """The regions of an image segmented by :func:`segment_image`.

    Parameters
    ----------
    rgb : (H, W, 3) ndarray of uint8
    result : SegmentationResult
    settings : SegmentSettings
        The settings ``result`` was made with.
    region_settings : RegionSettings

    Returns
    -------
    Regions

    Raises
    ------
    SettingsError
        If a region setting is invalid.
    """
    region_settings.validate()
    clusters = region_clusters(
        rgb, result.sweep, result.segmentation.labels, settings, region_settings, hist=result.hist
    )
    return find_regions(rgb, clusters, region_settings, hist=result.hist)
