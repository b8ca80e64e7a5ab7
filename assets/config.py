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

    k_min: int = Field(
        default=_D.k_min,
        description=f"Smallest number of segments K that may be chosen (1-{MAX_K}).",
    )
    k_max: int = Field(
        default=_D.k_max,
        description=f"Largest K tried by the sweep and allowed to be chosen (2-{MAX_K}, "
        "at least k_min).",
    )
    features: str = Field(
        default=_D.features,
        description=f"Colour space the pixels are clustered in: {', '.join(COLOUR_SPACES)} "
        "(in lab, distances are close to how different colours look).",
    )
    spatial_weight: float = Field(
        default=_D.spatial_weight,
        description="How much pixel position counts next to colour (0-10; 0 = colour only, "
        "exact and fastest; more gives more compact segments).",
    )
    min_strength: float = Field(
        default=_D.min_strength,
        description="Knee strength (0-1) an elbow needs to count as clear; below it the "
        "fallback rule chooses K.",
    )
    fallback: str = Field(
        default=_D.fallback,
        description=f"How K is chosen when there is no clear elbow: {', '.join(FALLBACKS)} "
        "(variance: the smallest K explaining variance_target of the variance; knee: the "
        "weak knee anyway).",
    )
    variance_target: float = Field(
        default=_D.variance_target,
        description="Share of the variance K must explain under the variance fallback, "
        "between 0 and 1 exclusive (0.8 = 80%).",
    )
    seed: int = Field(
        default=_D.seed, description="Random seed of K-means (same seed, same result)."
    )
    k_override: int | None = Field(
        default=None,
        description="Use this K for every image instead of the elbow (leave unset to choose "
        "K automatically).",
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
