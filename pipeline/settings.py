"""Segmentation settings: one frozen dataclass, validated in one place.

The CLI, the Dagster launchpad config and the tests all build a
:class:`SegmentSettings`; :meth:`SegmentSettings.validate` is the single
place where a bad value is refused, with the field named.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Self

from .errors import SettingsError

__all__ = [
    "COLOUR_SPACES",
    "FALLBACKS",
    "MAX_K",
    "MAX_REGIONS",
    "MAX_SEED",
    "REGION_SOURCES",
    "STOP_FALLBACKS",
    "RegionSettings",
    "SegmentSettings",
]

#: Colour spaces the features can be expressed in.
COLOUR_SPACES = ("rgb", "lab", "hsv")
#: What to do when the WCSS curve has no clear elbow (see :mod:`pipeline.elbow`).
FALLBACKS = ("variance", "knee")
#: Largest K supported: label maps are written as 8-bit PNGs up to 255 and 16-bit above.
MAX_K = 64
#: Largest seed: the random generators scikit-learn uses take 32-bit seeds.
MAX_SEED = 2**32 - 1
#: Which K-means clustering the regions start from (see :class:`RegionSettings`).
REGION_SOURCES = ("chosen", "finest")
#: What the region stopping rule does when the merge curve has no clear jump.
STOP_FALLBACKS = ("gap", "threshold")
#: Most regions a stop may keep (label maps stay 16-bit; the smallest floor allows 10,000).
MAX_REGIONS = 10_000


class _Validated:
    """What both settings classes share: validation, plain-JSON form, fingerprint."""

    def problems(self) -> list[SettingsError]:
        """Every invalid field, in field order; each settings class defines its own."""
        raise NotImplementedError(f"{type(self).__name__} must define problems()")

    def validate(self) -> Self:
        """Check every field; return ``self`` so calls can be chained.

        Raises
        ------
        SettingsError
            Naming the first invalid field; when several are invalid, its message
            lists every one of them (:meth:`problems` gives them one by one).
        """
        found = self.problems()
        if found:
            first = found[0]
            raise SettingsError(first.field, first.message, found[1:])
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, stable key order (used in cache keys and summaries)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def fingerprint(self) -> str:
        """A canonical JSON string of the settings, for hashing into cache keys."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        """Build and validate settings from a mapping; unknown keys are refused."""
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise SettingsError(unknown[0], f"unknown setting; known ones are {sorted(known)}")
        return cls(**values).validate()


@dataclass(frozen=True)
class SegmentSettings(_Validated):
    """Everything that changes a segmentation's result.

    Attributes
    ----------
    k_min, k_max : int
        The range of K that may be chosen (inclusive). The sweep always also fits
        K=1, which normalises the explained-variance fraction and anchors the curve.
    features : {"lab", "rgb", "hsv"}
        Colour space of the clustering features. CIE Lab (the default) is close to
        perceptually uniform, so Euclidean distances match what people see.
    spatial_weight : float
        Weight of the pixel position features (0 = colour only, exact sweep on the
        distinct colours). Positive values add x and y, scaled so that the larger
        image side spans ``spatial_weight`` times the colour space's span.
    seed : int
        Seed of every random choice (initialisation, samples); same seed, same result.
    k_override : int or None
        Use this K and skip the elbow choice.
    min_strength : float
        Elbow sensitivity: a knee weaker than this (in [0, 1]) counts as "no clear elbow".
    fallback : {"variance", "knee"}
        Rule used when there is no clear elbow: ``variance`` takes the smallest K that
        explains ``variance_target`` of the variance; ``knee`` keeps the weak knee.
    variance_target : float
        Explained-variance share used by the ``variance`` fallback, in (0, 1).
    """

    k_min: int = 2
    k_max: int = 12
    features: str = "lab"
    spatial_weight: float = 0.0
    seed: int = 0
    k_override: int | None = None
    min_strength: float = 0.45
    fallback: str = "variance"
    variance_target: float = 0.8

    def problems(self) -> list[SettingsError]:
        """Every invalid field, in field order (empty when all are valid).

        Returns
        -------
        list of SettingsError
            One per bad field, each naming the field and the valid range.
        """
        found: list[SettingsError] = []

        def bad(name: str, message: str) -> None:
            found.append(SettingsError(name, message))

        ints_ok = {}
        for name in ("k_min", "k_max", "seed"):
            value = getattr(self, name)
            ints_ok[name] = not isinstance(value, bool) and isinstance(value, int)
            if not ints_ok[name]:
                bad(name, f"must be an integer, got {value!r}")
        if ints_ok["k_min"] and not 1 <= self.k_min <= MAX_K:
            bad("k_min", f"must be between 1 and {MAX_K}, got {self.k_min}")
        if ints_ok["k_max"] and not 2 <= self.k_max <= MAX_K:
            bad("k_max", f"must be between 2 and {MAX_K}, got {self.k_max}")
        if (
            ints_ok["k_min"]
            and ints_ok["k_max"]
            and 1 <= self.k_min <= MAX_K
            and 2 <= self.k_max <= MAX_K
            and self.k_min > self.k_max
        ):
            bad("k_min", f"k_min={self.k_min} must not exceed k_max={self.k_max}")
        if self.features not in COLOUR_SPACES:
            bad("features", f"must be one of {', '.join(COLOUR_SPACES)}, got {self.features!r}")
        if not _is_number(self.spatial_weight) or not 0 <= self.spatial_weight <= 10:
            bad("spatial_weight", f"must be a number between 0 and 10, got {self.spatial_weight!r}")
        if ints_ok["seed"] and not 0 <= self.seed <= MAX_SEED:
            bad("seed", f"must be between 0 and {MAX_SEED} (2**32 - 1), got {self.seed}")
        if self.k_override is not None:
            k = self.k_override
            if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
                bad("k_override", f"must be empty or an integer between 1 and {MAX_K}, got {k!r}")
        if not _is_number(self.min_strength) or not 0 <= self.min_strength <= 1:
            bad("min_strength", f"must be between 0 and 1, got {self.min_strength!r}")
        if self.fallback not in FALLBACKS:
            bad("fallback", f"must be one of {', '.join(FALLBACKS)}, got {self.fallback!r}")
        if not _is_number(self.variance_target) or not 0 < self.variance_target < 1:
            bad(
                "variance_target",
                f"must be strictly between 0 and 1, got {self.variance_target!r}",
            )
        return found

    @property
    def sweep_k_values(self) -> tuple[int, ...]:
        """The K values the sweep fits: 1 (for normalisation) and then ``k_min..k_max``.

        When an override lies outside the range it is fitted too.
        """
        ks = {1, *range(self.k_min, self.k_max + 1)}
        if self.k_override is not None:
            ks.add(self.k_override)
        return tuple(sorted(ks))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


@dataclass(frozen=True)
class RegionSettings(_Validated):
    """Everything that changes the regions made from a segmentation (:mod:`pipeline.regions`).

    Attributes
    ----------
    enabled : bool
        Make regions at all (``kseg segment --no-regions`` turns them off).
    source : {"chosen", "finest"}
        The K-means clustering the regions start from: ``chosen`` the K chosen at the
        elbow (the default: on BSDS500 train it scores about +0.01 Covering over
        ``finest``), ``finest`` the sweep's largest K (``k_max``).
    min_share : float
        Size floor, as a share of the image's pixels: smaller connected pieces are
        folded into the adjacent region of closest mean colour.
    max_cost : float
        The stopping threshold: merging goes on while a merge raises the mean squared
        Lab distance of the image's pixels to their region's mean by at most this much
        (Delta-E squared per pixel; see :mod:`pipeline.stopping`).
    min_strength : float
        A stop weaker than this (in [0, 1]) counts as "no clear stop".
    fallback : {"gap", "threshold"}
        Rule used when there is no clear stop: ``gap`` takes the strongest gap of the
        merge curve within a factor ``1 + gap_span`` of the threshold's count;
        ``threshold`` keeps the threshold's count.
    gap_span : float
        How far (as a factor above 1) the ``gap`` fallback looks around the threshold.
    min_regions, max_regions : int
        The range of region counts the stopping rule may choose (inclusive).
    n_regions : int or None
        Keep exactly this many regions (capped at what folding leaves) and skip the rule.
    """

    enabled: bool = True
    source: str = "chosen"
    min_share: float = 0.005
    max_cost: float = 10.0
    min_strength: float = 0.5
    fallback: str = "gap"
    gap_span: float = 0.5
    min_regions: int = 1
    max_regions: int = 100
    n_regions: int | None = None

    def problems(self) -> list[SettingsError]:
        """Every invalid field, in field order (empty when all are valid)."""
        found: list[SettingsError] = []

        def bad(name: str, message: str) -> None:
            found.append(SettingsError(name, message))

        if not isinstance(self.enabled, bool):
            bad("enabled", f"must be true or false, got {self.enabled!r}")
        if self.source not in REGION_SOURCES:
            bad("source", f"must be one of {', '.join(REGION_SOURCES)}, got {self.source!r}")
        if not _is_number(self.min_share) or not 0.0001 <= self.min_share <= 0.1:
            bad("min_share", f"must be a number between 0.0001 and 0.1, got {self.min_share!r}")
        if not _is_number(self.max_cost) or not 0 < self.max_cost <= 10_000:
            bad("max_cost", f"must be a number above 0 and at most 10000, got {self.max_cost!r}")
        if not _is_number(self.min_strength) or not 0 <= self.min_strength <= 1:
            bad("min_strength", f"must be between 0 and 1, got {self.min_strength!r}")
        if self.fallback not in STOP_FALLBACKS:
            bad("fallback", f"must be one of {', '.join(STOP_FALLBACKS)}, got {self.fallback!r}")
        if not _is_number(self.gap_span) or not 0 <= self.gap_span <= 4:
            bad("gap_span", f"must be a number between 0 and 4, got {self.gap_span!r}")
        counts_ok = True
        for name in ("min_regions", "max_regions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                bad(name, f"must be an integer, got {value!r}")
                counts_ok = False
            elif not 1 <= value <= MAX_REGIONS:
                bad(name, f"must be between 1 and {MAX_REGIONS}, got {value}")
                counts_ok = False
        if counts_ok and self.min_regions > self.max_regions:
            bad(
                "min_regions",
                f"min_regions={self.min_regions} must not exceed max_regions={self.max_regions}",
            )
        n = self.n_regions
        if n is not None and (
            isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_REGIONS
        ):
            bad("n_regions", f"must be empty or an integer between 1 and {MAX_REGIONS}, got {n!r}")
        return found
