"""PNG plots for reports and the Dagster UI (matplotlib, Agg backend).

Sizes are chosen to be readable at the Dagster UI's width (about 900 pixels) while a
PNG stays under about 60 KB, small enough to embed in metadata.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from .elbow import ElbowChoice
    from .stopping import StopChoice

__all__ = ["candidates", "elbow_plot_png", "merge_curve_png", "report_plot_png"]

_BLUE, _RED, _GREY = "#3b6ea8", "#d1495b", "#6c757d"
_INDICES = {
    "silhouette": ("silhouette (higher is better)", "max", "#2a9d8f"),
    "calinski_harabasz": ("Calinski-Harabasz (higher is better)", "max", "#e9a23b"),
    "davies_bouldin": ("Davies-Bouldin (lower is better)", "min", "#8e5ea2"),
}


def _figure(width: float, height: float, dpi: int):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=dpi, layout="constrained")


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def candidates(table: pd.DataFrame) -> dict[str, int]:
    """The K each index would choose on its own (only K > 1 with a finite value).

    Returns
    -------
    dict of str to int
        Index column to the K where it is best (max or min, as the index prefers).
    """
    found = {}
    rows = table[table["k"] > 1]
    for column, (_, best, _) in _INDICES.items():
        values = rows[column].to_numpy(dtype=np.float64)
        finite = np.isfinite(values)
        if not finite.any():
            continue
        index = np.nanargmax(np.where(finite, values, np.nan)) if best == "max" else (
            np.nanargmin(np.where(finite, values, np.nan))
        )  # fmt: skip
        found[column] = int(rows["k"].to_numpy()[index])
    return found


def elbow_plot_png(
    table: pd.DataFrame,
    choice: ElbowChoice,
    *,
    width: float = 9.0,
    height: float = 3.6,
    dpi: int = 100,
) -> bytes:
    """The K sweep as the person choosing K needs it, as PNG bytes.

    Left: WCSS against K on log axes (where a structureless image is a straight
    line), the chosen K circled and the rule that chose it in the title. Right: the
    other indices kseg computes (silhouette, Calinski-Harabasz, Davies-Bouldin),
    each scaled to [0, 1] over the swept K, with the K each of them would pick marked.

    Parameters
    ----------
    table : pandas.DataFrame
        A sweep table (:data:`pipeline.sweep.METRIC_COLUMNS`).
    choice : ElbowChoice
    width, height : float
        Figure size in inches; at the default ``dpi`` about 900x360 pixels.

    Returns
    -------
    bytes
    """
    fig = _figure(width, height, dpi)
    left, right = fig.subplots(1, 2, width_ratios=[1.15, 1])
    ks = table["k"].to_numpy()
    wcss = table["wcss"].to_numpy(dtype=np.float64)
    positive = wcss > 0
    left.plot(ks[positive], wcss[positive], "o-", color=_BLUE, markersize=4, linewidth=1.5)
    chosen = table.loc[table["k"] == choice.k]
    if not chosen.empty and chosen["wcss"].iloc[0] > 0:
        left.plot(
            choice.k, chosen["wcss"].iloc[0], "o", markersize=11, markerfacecolor="none",
            markeredgecolor=_RED, markeredgewidth=2.2, label=f"chosen K = {choice.k}",
        )  # fmt: skip
        left.legend(fontsize=8, loc="upper right", frameon=False)
    if positive.sum() > 1:
        left.set_yscale("log")
    left.set_xscale("log")
    left.set_xticks(ks, [str(k) for k in ks])
    left.minorticks_off()
    left.set_title(f"K = {choice.k}: {choice.detail}", fontsize=9, wrap=True)
    left.set_xlabel("K (log scale)", fontsize=8)
    left.set_ylabel("WCSS (log scale)", fontsize=8)
    left.tick_params(labelsize=8)
    left.grid(alpha=0.3)

    picks = candidates(table)
    rows = table[table["k"] > 1]
    for column, (label, _, colour) in _INDICES.items():
        values = rows[column].to_numpy(dtype=np.float64)
        finite = np.isfinite(values)
        if finite.sum() < 1:
            continue
        low, high = np.nanmin(values[finite]), np.nanmax(values[finite])
        scaled = (values - low) / (high - low) if high > low else np.full_like(values, 0.5)
        kk = rows["k"].to_numpy()
        right.plot(kk[finite], scaled[finite], "o-", color=colour, markersize=3, linewidth=1.2,
                   label=f"{label}: K={picks[column]}")  # fmt: skip
        best = kk == picks[column]
        right.plot(kk[best], scaled[best], "*", color=colour, markersize=12)
    right.axvline(choice.k, color=_RED, linewidth=1.2, linestyle="--", label=f"chosen K={choice.k}")
    right.set_title("other indices, scaled to [0, 1]; * = the K each would pick", fontsize=9)
    right.set_xlabel("K", fontsize=8)
    right.set_xticks(rows["k"].to_numpy())
    right.tick_params(labelsize=8)
    right.set_ylim(-0.05, 1.05)
    right.grid(alpha=0.3)
    right.legend(fontsize=7, loc="best", framealpha=0.85)
    return _png(fig)


def merge_curve_png(
    merges: pd.DataFrame,
    choice: StopChoice,
    *,
    max_cost: float,
    width: float = 9.0,
    height: float = 3.0,
    dpi: int = 100,
) -> bytes:
    """The region merge curve as the person judging the stop needs it, as PNG bytes.

    The cost per pixel of the next merge against the number of regions kept, both on
    log axes (merging runs right to left), with the threshold ``max_cost`` drawn, the
    kept count circled and the stopping rule's sentence in the title. A clear stop is
    a point just right of a big jump up of the curve.

    Parameters
    ----------
    merges : pandas.DataFrame
        :meth:`pipeline.regions.Regions.merge_table`.
    choice : StopChoice
    max_cost : float
        The stopping threshold (``RegionSettings.max_cost``).
    width, height : float
        Figure size in inches; at the default ``dpi`` about 900x300 pixels.

    Returns
    -------
    bytes
    """
    fig = _figure(width, height, dpi)
    ax = fig.subplots(1, 1)
    rows = merges[np.isfinite(merges["cost_per_pixel"].to_numpy(dtype=np.float64))]
    regions = rows["regions"].to_numpy()
    cost = rows["cost_per_pixel"].to_numpy(dtype=np.float64)
    shown = cost > 0
    if shown.any():
        ax.plot(regions[shown], cost[shown], "o-", color=_BLUE, markersize=2.5, linewidth=1.2,
                label="cost per pixel of the next merge")  # fmt: skip
        ax.set_yscale("log")
        ax.axhline(max_cost, color=_GREY, linestyle="--", linewidth=1.0,
                   label=f"threshold max_cost = {max_cost:g}")  # fmt: skip
        at = shown & (regions == choice.n_regions)
        if at.any():
            ax.plot(regions[at], cost[at], "o", markersize=11, markerfacecolor="none",
                    markeredgecolor=_RED, markeredgewidth=2.2,
                    label=f"kept {choice.n_regions} regions")  # fmt: skip
        ax.legend(fontsize=8, loc="upper right", frameon=False)
    if regions.size and regions.max() > 1:
        from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_title(choice.detail[:1].upper() + choice.detail[1:], fontsize=9, wrap=True)
    ax.set_xlabel("regions kept (log scale; merging runs right to left)", fontsize=8)
    ax.set_ylabel("next merge's cost per pixel", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def report_plot_png(
    chosen_k: np.ndarray,
    strength: np.ndarray,
    seconds: np.ndarray,
    *,
    min_strength: float,
    width: float = 9.0,
    height: float = 2.8,
    dpi: int = 100,
) -> bytes:
    """Three panels across images: chosen K, knee strength, seconds per image.

    Parameters
    ----------
    chosen_k, strength, seconds : (N,) ndarray
        One value per segmented image (NaN where missing; dropped).
    min_strength : float
        The threshold drawn on the strength panel.

    Returns
    -------
    bytes
    """
    fig = _figure(width, height, dpi)
    axes = fig.subplots(1, 3)
    k = chosen_k[np.isfinite(chosen_k)].astype(int)
    if k.size:
        bins = np.arange(k.min(), k.max() + 2) - 0.5
        axes[0].hist(k, bins=bins, color=_BLUE, rwidth=0.85)
        axes[0].set_xticks(np.arange(k.min(), k.max() + 1))
    axes[0].set_title(f"chosen K ({k.size} images)", fontsize=9)
    s = strength[np.isfinite(strength)]
    axes[1].hist(s, bins=np.linspace(0, 1, 21), color=_BLUE)
    axes[1].axvline(min_strength, color=_RED, linestyle="--", linewidth=1.2,
                    label=f"clear elbow from {min_strength:.2f}")  # fmt: skip
    axes[1].legend(fontsize=7, frameon=False)
    axes[1].set_title("knee strength", fontsize=9)
    t = seconds[np.isfinite(seconds)]
    if t.size:
        axes[2].hist(t, bins=min(20, max(1, t.size)), color=_GREY)
    axes[2].set_title(f"seconds per image (total {t.sum():.1f} s)", fontsize=9)
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("images", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    return _png(fig)
