"""Choose where to stop merging regions, by reading the merge curve, and say how clearly.

The merge curve (:class:`pipeline.regions.MergeCurve`) lists, merge by merge, the
increase of the within-region sum of squares in CIE Lab. Divided by the image's pixel
count it is the *cost per pixel*: how much the mean squared colour distance of every
pixel to its region's mean grows (in Delta-E squared). It does not depend on the
image's size, and a merge of two regions of shares ``p`` and ``q`` at colour distance
``d`` costs ``p q / (p + q) d^2``: a small region must differ much more than a large
one to be kept apart.

The rule, in steps:

1. **Threshold.** Merges are made in order while the cost per pixel stays at or below
   ``settings.max_cost``; the stop ``n_t`` is the region count before the first merge
   that costs more.
2. **Strength.** The stop is clear when that merge stands far above every merge made
   before it: strength ``1 - max(costs so far) / cost of the next merge``, in [0, 1]
   (0 when the next merge costs no more than one already made, 1 when every merge so
   far was free). This is the gap of the curve at the stop, read as the K elbow reads
   its log slopes (:mod:`pipeline.elbow`).
3. **Clear stop.** When the strength is at least ``settings.min_strength``, keep ``n_t``.
4. **No clear stop** (the curve creeps over the threshold with no gap), the fallback:
   ``gap`` takes the stopping point of greatest strength among the counts within a
   factor ``1 + settings.gap_span`` of ``n_t`` (the largest gap near the threshold;
   ``n_t`` itself when none is stronger); ``threshold`` keeps ``n_t``.
5. The count is clamped to ``[settings.min_regions, settings.max_regions]`` (and to
   what the curve allows); ``settings.n_regions`` overrides all of it.

Defaults, tuned on the BSDS500 train split only (``benchmarks/tune_regions.py``):
``max_cost = 10``, ``min_strength = 0.5``, ``gap_span = 0.5``. About half the train
photos have a clear stop; the gap fallback adds about +0.005 Covering over the
threshold alone, which does most of the work.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .elbow import compared
from .settings import RegionSettings

if TYPE_CHECKING:
    from .regions import MergeCurve

__all__ = ["StopChoice", "choose_stop", "gap_strengths"]

_TIE = 1e-9


@dataclass(frozen=True)
class StopChoice:
    """How many regions to keep and why.

    Attributes
    ----------
    n_regions : int
        Regions kept.
    rule : str
        What decided: ``"threshold"`` (a clear stop), ``"fallback-gap"``,
        ``"fallback-threshold"``, ``"no-merge"`` (nothing to merge),
        ``"override"`` (``n_regions`` set), with ``"+clamped"`` appended when the
        count was moved into ``[min_regions, max_regions]``.
    strength : float
        Strength of the kept stopping point, in [0, 1] (1 for an override or when
        nothing could be merged).
    reason : str
        ``"clear_stop"``, ``"no_clear_stop"``, ``"override"`` or ``"no_merge"``.
    threshold_regions : int or None
        ``n_t``, the count the threshold alone gives (None for an override).
    detail : str
        One sentence for people.
    """

    n_regions: int
    rule: str
    strength: float
    reason: str
    threshold_regions: int | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)


def gap_strengths(costs: np.ndarray) -> np.ndarray:
    """Strength of stopping before each merge: ``1 - max(costs before) / cost``.

    Parameters
    ----------
    costs : (M,) ndarray of float64
        Cost of each merge, in merge order.

    Returns
    -------
    (M,) ndarray of float64
        In [0, 1]; entry ``i`` is the strength of stopping before merge ``i`` (1 for
        the first merge when it costs anything, 0 for a merge that costs nothing).
    """
    costs = np.asarray(costs, dtype=np.float64)
    before = np.concatenate([[0.0], np.maximum.accumulate(costs)[:-1]])
    with np.errstate(divide="ignore", invalid="ignore"):
        strength = np.where(costs > 0, 1.0 - before / costs, 0.0)
    return np.clip(strength, 0.0, 1.0)


def _clamp(n: int, settings: RegionSettings, lowest: int, highest: int) -> tuple[int, bool]:
    kept = min(max(n, settings.min_regions), settings.max_regions)
    kept = min(max(kept, lowest), highest)
    return kept, kept != n


def choose_stop(curve: MergeCurve, settings: RegionSettings) -> StopChoice:
    """Choose how many regions to keep from a merge curve (rule in the module docstring).

    Parameters
    ----------
    curve : MergeCurve
    settings : RegionSettings
        ``max_cost``, ``min_strength``, ``fallback``, ``gap_span``, ``min_regions``,
        ``max_regions``, ``n_regions``; prior validation assumed.

    Returns
    -------
    StopChoice
    """
    highest = curve.n_start
    lowest = int(curve.regions[-1]) if curve.regions.size else curve.n_start
    if settings.n_regions is not None:
        n = min(max(settings.n_regions, lowest), highest)
        note = "" if n == settings.n_regions else f" (capped from {settings.n_regions})"
        return StopChoice(n, "override", 1.0, "override", None, f"{n} regions set{note}")
    if curve.costs.size == 0:
        return StopChoice(
            highest, "no-merge", 1.0, "no_merge", highest,
            f"{highest} region(s) and no two touching ones to merge",
        )  # fmt: skip
    per_pixel = curve.cost_per_pixel
    stops = curve.regions + 1  # stopping before merge i keeps regions[i] + 1 regions
    strength = gap_strengths(per_pixel)
    over = np.flatnonzero(per_pixel > settings.max_cost)
    i = int(over[0]) if over.size else per_pixel.size  # merge everything when none is over
    n_t = int(stops[i]) if i < per_pixel.size else lowest
    s_t = float(strength[i]) if i < per_pixel.size else 1.0
    cost_note = (
        f"the next merge costs {per_pixel[i]:.3g} > {settings.max_cost:g} per pixel"
        if i < per_pixel.size
        else f"every merge costs at most {settings.max_cost:g} per pixel"
    )
    if s_t >= settings.min_strength:
        n, rule, reason, s = n_t, "threshold", "clear_stop", s_t
        detail = (
            f"clear stop at {n_t} regions: {cost_note} (strength "
            + compared(s_t, settings.min_strength)
            + ")"
        )
    else:
        weak = (
            f"no clear stop ({cost_note} at {n_t} regions, strength "
            + compared(s_t, settings.min_strength)
            + ")"
        )
        n, s, rule, reason = n_t, s_t, "fallback-threshold", "no_clear_stop"
        detail = f"{weak}; the threshold's count is kept"
        if settings.fallback == "gap":
            lo, hi = n_t / (1 + settings.gap_span), n_t * (1 + settings.gap_span)
            stronger = strength > s_t + _TIE  # equal strengths up to rounding do not move the stop
            near = np.flatnonzero((stops >= lo) & (stops <= hi) & stronger)
            rule = "fallback-gap"
            if near.size:
                j = int(near[np.argmax(strength[near])])
                n, s = int(stops[j]), float(strength[j])
                detail = f"{weak}; the strongest gap within x{1 + settings.gap_span:g} is at "
                detail += f"{n} regions (strength {s:.2f})"
            else:
                detail = f"{weak}; no stronger gap within x{1 + settings.gap_span:g}, kept"
    kept, clamped = _clamp(n, settings, lowest, highest)
    if clamped:
        rule += "+clamped"
        detail += f"; clamped to {kept} (regions {settings.min_regions}..{settings.max_regions})"
        at = highest - kept  # the merge that stopping at `kept` regions leaves undone
        s = float(strength[at]) if at < strength.size else 1.0
    return StopChoice(kept, rule, s, reason, n_t, detail)
