"""Run settings in the launchpad: one ``Config`` mapped to :class:`SegmentSettings`.

Every field carries a description shown in the launchpad. Values are checked by
:meth:`pipeline.settings.SegmentSettings.validate` (the engine's single place for
that) at the start of the step, before any image is read; a bad value fails the
run with a :class:`dagster.Failure` naming the field.
"""

import dagster as dg
from pydantic import Field

from pipeline.errors import SettingsError
from pipeline.settings import COLOUR_SPACES, FALLBACKS, MAX_K, SegmentSettings

__all__ = ["SegmentationConfig", "settings_or_failure"]

_D = SegmentSettings()


class SegmentationConfig(dg.Config):
    """How every image of the run is segmented."""

    k_min: int = Field(default=_D.k_min, description=f"Smallest K that may be chosen (1-{MAX_K}).")
    k_max: int = Field(
        default=_D.k_max, description=f"Largest K that may be chosen (2-{MAX_K}, >= k_min)."
    )
    features: str = Field(
        default=_D.features,
        description=f"Colour space of the clustering features: {', '.join(COLOUR_SPACES)}. "
        "Lab is close to perceptually uniform.",
    )
    spatial_weight: float = Field(
        default=_D.spatial_weight,
        description="Weight of pixel position (0-10; 0 = colour only, exact and fastest).",
    )
    min_strength: float = Field(
        default=_D.min_strength,
        description="Elbow sensitivity (0-1): a knee weaker than this counts as no clear elbow.",
    )
    fallback: str = Field(
        default=_D.fallback,
        description=f"Rule when there is no clear elbow: {', '.join(FALLBACKS)} "
        "(variance: smallest K explaining variance_target; knee: keep the weak knee).",
    )
    variance_target: float = Field(
        default=_D.variance_target,
        description="Explained-variance share used by the variance fallback, in (0, 1).",
    )
    seed: int = Field(default=_D.seed, description="Random seed (same seed, same result).")
    k_override: int | None = Field(
        default=None, description="Use this K for every image and skip the elbow (empty = auto)."
    )

    def to_settings(self) -> SegmentSettings:
        """The validated engine settings.

        Raises
        ------
        SettingsError
            Naming the first invalid field.
        """
        return SegmentSettings(
            k_min=self.k_min,
            k_max=self.k_max,
            features=self.features,
            spatial_weight=self.spatial_weight,
            seed=self.seed,
            k_override=self.k_override,
            min_strength=self.min_strength,
            fallback=self.fallback,
            variance_target=self.variance_target,
        ).validate()


def settings_or_failure(config: SegmentationConfig) -> SegmentSettings:
    """:meth:`SegmentationConfig.to_settings`, with a bad value raised as ``dagster.Failure``.

    Raises
    ------
    dagster.Failure
        Whose description names the field, e.g. ``invalid setting 'k_max': ...``;
        metadata ``field`` holds the field name.
    """
    try:
        return config.to_settings()
    except SettingsError as exc:
        raise dg.Failure(
            description=str(exc),
            metadata={"field": exc.field, "message": exc.message},
            allow_retries=False,
        ) from exc
