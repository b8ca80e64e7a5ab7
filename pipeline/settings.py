"""Segmentation settings: one frozen dataclass, validated in one place.

The CLI, the Dagster launchpad config and the tests all build a
:class:`SegmentSettings`; :meth:`SegmentSettings.validate` is the single
place where a bad value is refused, with the field named.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from .errors import SettingsError

__all__ = [
    "COLOUR_SPACES",
    "FALLBACKS",
    "MAX_K",
    "MAX_SEED",
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


@dataclass(frozen=True)
class SegmentSettings:
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

    def validate(self) -> SegmentSettings:
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

    @property
    def sweep_k_values(self) -> tuple[int, ...]:
        """The K values the sweep fits: 1 (for normalisation) and then ``k_min..k_max``.

        When an override lies outside the range it is fitted too.
        """
        ks = {1, *range(self.k_min, self.k_max + 1)}
        if self.k_override is not None:
            ks.add(self.k_override)
        return tuple(sorted(ks))

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, stable key order (used in cache keys and summaries)."""
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """A canonical JSON string of the settings, for hashing into cache keys."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SegmentSettings:
        """Build and validate settings from a mapping; unknown keys are refused."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SettingsError(unknown[0], f"unknown setting; known ones are {sorted(known)}")
        return cls(**values).validate()


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
