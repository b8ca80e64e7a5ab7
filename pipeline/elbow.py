"""Choose K at the elbow of the WCSS-versus-K curve, and say how clear it is.

Two readings of the curve are offered:

``log-slope`` (default)
    Reads the curve on log-log axes. A cloud of points with no natural groups
    (noise, smooth gradients, most photos) gives a WCSS curve close to a power law
    ``WCSS ~ K^-a``, a straight line on log-log axes, with no elbow; an image with
    K well-separated colour groups drops steeply until K and then flattens into
    the slow decline of splitting noise. With ``s_in`` the log-log slope into K and
    ``s_out`` the mean slope over the next (up to) three steps, the strength of K
    is ``1 - s_out / s_in`` clipped to [0, 1]: 0 on a straight line, 1 where the
    curve goes flat. The elbow is the K of greatest strength. A K where WCSS
    reaches zero (every distinct colour its own cluster) is a perfect elbow. The
    top of the range cannot be confirmed as an elbow (nothing follows it) and gets
    strength 0. The default threshold, 0.45, sits between the strongest bend
    measured on structureless images (0.34: uniform noise and smooth gradients in
    Lab) and the weakest true elbows on synthetic scenes (see
    ``benchmarks/bench_elbow.py``).
``kneedle``
    The classic Kneedle method (Satopää et al., 2011) on the raw curve, through
    the ``kneed`` package; its strength is the peak of Kneedle's normalised
    difference curve. On raw WCSS it tends to pick K=3-5 whatever the image,
    because any smooth convex curve bends there (kept for comparison).

When the strength is below ``settings.min_strength`` the curve has *no clear
elbow* and ``settings.fallback`` decides: ``variance`` takes the smallest K whose
explained-variance fraction ``1 - WCSS_K / WCSS_1`` reaches
``settings.variance_target``; ``knee`` keeps the weak elbow. The returned
:class:`ElbowChoice` records which rule decided.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .settings import SegmentSettings

__all__ = [
    "METHODS",
    "ElbowChoice",
    "choose_k",
    "compared",
    "kneedle_knee",
    "log_slope_elbow",
]

METHODS = ("log-slope", "kneedle")
_ZERO = 1e-12  # WCSS at or below this share of WCSS_1 counts as zero


@dataclass(frozen=True)
class ElbowChoice:
    """The K chosen for an image and why.

    Attributes
    ----------
    k : int
        The number of segments to use.
    method : str
        ``"log-slope"``, ``"kneedle"`` or ``"override"``.
    strength : float
        How clear the elbow is, in [0, 1] (1 for an override).
    reason : str
        ``"elbow"``, ``"no_clear_elbow"`` or ``"override"``.
    rule : str
        The rule that decided: ``"elbow"``, ``"wcss-zero"``, ``"fallback-variance"``,
        ``"fallback-knee"``, ``"override"``.
    detail : str
        One sentence for people.
    elbow_k : int or None
        The elbow candidate of the method, even when too weak to be used.
    capped : bool
        True when the image has fewer distinct points than the K range allows and
        K was capped at that number.
    k_values : tuple of int
    curve : tuple of float
        WCSS normalised to [0, 1] on a log scale (1 at the first K), for plots.
    """

    k: int
    method: str
    strength: float
    reason: str
    rule: str
    detail: str
    elbow_k: int | None
    capped: bool
    k_values: tuple[int, ...]
    curve: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        out = asdict(self)
        out["k_values"] = list(self.k_values)
        out["curve"] = list(self.curve)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ElbowChoice:
        """Inverse of :meth:`to_dict`."""
        values = dict(values)
        values["k_values"] = tuple(int(k) for k in values["k_values"])
        values["curve"] = tuple(float(v) for v in values["curve"])
        return cls(**values)


def compared(value: float, threshold: float) -> str:
    """``value >= threshold`` or ``value < threshold``, each shown with as many decimals
    as it takes for the shown numbers to agree with the comparison (0.4483 against 0.45
    reads ``0.448 < 0.45``, never ``0.45 < 0.45``)."""
    sign = ">=" if value >= threshold else "<"
    for digits in range(2, 7):
        shown, limit = round(value, digits), round(threshold, digits)
        if (shown >= limit) == (value >= threshold):
            return f"{shown:.{digits}f} {sign} {limit:.{max(2, _decimals(threshold))}f}"
    return f"{value!r} {sign} {threshold!r}"


def _decimals(number: float) -> int:
    text = f"{number:.6f}".rstrip("0")
    return len(text.split(".")[1]) if "." in text else 0


def _log_curve(wcss: np.ndarray) -> np.ndarray:
    floor = max(wcss[0], np.finfo(float).tiny) * _ZERO
    return np.log(np.maximum(wcss, floor))


def log_slope_elbow(
    k_values: np.ndarray, wcss: np.ndarray, candidates: np.ndarray
) -> tuple[int | None, float]:
    """The elbow of a WCSS curve read on log-log axes, and its strength.

    Parameters
    ----------
    k_values : (n,) ndarray of int
        Increasing K.
    wcss : (n,) ndarray of float
        Non-increasing WCSS.
    candidates : (n,) ndarray of bool
        Which K may be chosen.

    Returns
    -------
    k : int or None
        None when no candidate has a predecessor on the curve.
    strength : float
    """
    ks = np.asarray(k_values, dtype=np.float64)
    log_w = _log_curve(np.asarray(wcss, dtype=np.float64))
    slopes = -np.diff(log_w) / np.diff(np.log(ks))  # slopes[i]: from ks[i] to ks[i+1]
    best, best_strength = None, -1.0
    for i in np.flatnonzero(candidates):
        if i == 0:
            continue
        s_in = slopes[i - 1]
        s_out = slopes[i : i + 3]
        if s_out.size == 0 or s_in <= 0:
            strength = 0.0
        else:
            strength = float(np.clip(1.0 - s_out.mean() / s_in, 0.0, 1.0))
        if strength > best_strength:
            best, best_strength = int(ks[i]), strength
    return best, max(best_strength, 0.0)


def kneedle_knee(
    k_values: np.ndarray, wcss: np.ndarray, candidates: np.ndarray, *, sensitivity: float = 1.0
) -> tuple[int | None, float]:
    """The Kneedle knee of the raw curve (``kneed``) and the peak of its difference curve."""
    import warnings

    from kneed import KneeLocator

    with warnings.catch_warnings():
        # kneed warns "No knee/elbow found" and returns None, which we handle; on a
        # flat curve its normalisation divides by zero (RuntimeWarning), same result.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        locator = KneeLocator(
            list(k_values), list(wcss), S=sensitivity, curve="convex", direction="decreasing"
        )
    knee = locator.knee
    if knee is None or not candidates[list(k_values).index(int(knee))]:
        return None, 0.0
    strength = float(np.clip(np.max(locator.y_difference), 0.0, 1.0))
    return int(knee), strength


def choose_k(
    k_values: list[int] | np.ndarray,
    wcss: list[float] | np.ndarray,
    settings: SegmentSettings,
    *,
    n_distinct: int | None = None,
    method: str = "log-slope",
) -> ElbowChoice:
    """Choose K from a WCSS curve.

    Parameters
    ----------
    k_values : sequence of int
        Increasing K of the sweep (normally 1 and then ``k_min .. k_max``).
    wcss : sequence of float
        WCSS per K, non-increasing.
    settings : SegmentSettings
        K range, override, ``min_strength``, ``fallback``, ``variance_target``.
    n_distinct : int, optional
        Number of distinct points (colours) in the image; K is capped at it.
    method : {"log-slope", "kneedle"}

    Returns
    -------
    ElbowChoice

    Raises
    ------
    ValueError
        If the curve is empty, not aligned with ``k_values``, or ``method`` is unknown.
    """
    ks = np.asarray(k_values, dtype=np.int64)
    w = np.asarray(wcss, dtype=np.float64)
    if ks.size == 0 or ks.shape != w.shape:
        raise ValueError(f"k_values ({ks.size}) and wcss ({w.size}) must be non-empty and aligned")
    if method not in METHODS:
        raise ValueError(f"unknown elbow method {method!r}; expected one of {METHODS}")
    log_w = _log_curve(w)
    span = log_w[0] - log_w.min()
    curve = tuple(float(v) for v in ((log_w - log_w.min()) / span if span > 0 else log_w * 0 + 1))
    limit = n_distinct if n_distinct is not None else int(ks.max())
    capped = limit < settings.k_min
    common = {"k_values": tuple(int(k) for k in ks), "curve": curve, "capped": capped}

    if settings.k_override is not None:
        k = min(settings.k_override, limit)
        note = f" (capped from {settings.k_override}: the image has {limit} distinct colours)"
        return ElbowChoice(
            k=k, method="override", strength=1.0, reason="override", rule="override",
            detail=f"K fixed at {k} by the settings" + (note if k < settings.k_override else ""),
            elbow_k=None, **common,
        )  # fmt: skip
    if capped:
        return ElbowChoice(
            k=limit, method=method, strength=1.0, reason="elbow", rule="wcss-zero",
            detail=f"the image has only {limit} distinct colour(s), fewer than k_min="
            f"{settings.k_min}; K capped at {limit}",
            elbow_k=limit, **common,
        )  # fmt: skip

    lo, hi = settings.k_min, min(settings.k_max, limit)
    candidates = (ks >= lo) & (ks <= hi)
    zero = candidates & (w <= w[0] * _ZERO)
    if zero.any():
        k = int(ks[np.argmax(zero)])
        return ElbowChoice(
            k=k, method=method, strength=1.0, reason="elbow", rule="wcss-zero",
            detail=f"WCSS reaches zero at K={k}: every distinct colour has its own cluster",
            elbow_k=k, **common,
        )  # fmt: skip
    if method == "log-slope":
        elbow_k, strength = log_slope_elbow(ks, w, candidates)
    else:
        elbow_k, strength = kneedle_knee(ks, w, candidates)
    if elbow_k is not None and strength >= settings.min_strength:
        return ElbowChoice(
            k=elbow_k, method=method, strength=strength, reason="elbow", rule="elbow",
            detail=f"clear elbow at K={elbow_k} (strength "
            f"{compared(strength, settings.min_strength)})",
            elbow_k=elbow_k, **common,
        )  # fmt: skip
    weak = (
        f"no clear elbow (best K={elbow_k}, strength {compared(strength, settings.min_strength)})"
        if elbow_k is not None
        else "no elbow candidate in the K range"
    )
    if settings.fallback == "knee" and elbow_k is not None:
        return ElbowChoice(
            k=elbow_k, method=method, strength=strength, reason="no_clear_elbow",
            rule="fallback-knee", detail=f"{weak}; the weak elbow is kept",
            elbow_k=elbow_k, **common,
        )  # fmt: skip
    explained = 1.0 - w / w[0] if w[0] > 0 else np.ones_like(w)
    reach = candidates & (explained >= settings.variance_target)
    if reach.any():
        k = int(ks[np.argmax(reach)])
        share = float(explained[ks == k][0])
        detail = (
            f"{weak}; K={k} is the smallest K explaining {settings.variance_target:.0%} "
            f"of the variance ({share:.1%})"
        )
    else:
        k = int(ks[candidates][-1])
        detail = f"{weak}; no K explains {settings.variance_target:.0%}, so the largest, K={k}"
    return ElbowChoice(
        k=k, method=method, strength=strength, reason="no_clear_elbow",
        rule="fallback-variance", detail=detail, elbow_k=elbow_k, **common,
    )  # fmt: skip
