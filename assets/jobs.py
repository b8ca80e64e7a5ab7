"""Jobs: segment images, rebuild the report, observe the sources, set an image's own settings."""

from enum import StrEnum
from typing import Any

import dagster as dg
from pydantic import Field

from pipeline.errors import KsegError
from pipeline.settings import MAX_K, MAX_REGIONS, MAX_SEED

from .changes import settings_observation
from .incoming import is_valid_partition_key
from .names import IMAGE_ASSETS, PARTITIONS_NAME, REPORT, SOURCES
from .settings import ProjectSettings, change_problems, update_own_settings
from .storage import KsegStorage

__all__ = [
    "JOBS",
    "ImageSettingsRequest",
    "observe_images",
    "segment_images",
    "segmentation_report_job",
    "set_image_settings",
]

#: Every per-image asset, in process (no subprocess per step). A run covers one image
#: or, in a backfill, a batch of images.
segment_images = dg.define_asset_job(
    name="segment_images",
    selection=dg.AssetSelection.assets(*IMAGE_ASSETS),
    executor_def=dg.in_process_executor,
    description="Decode, featurise, sweep K, choose K and segment the selected images. Images "
    "are kept current without launching this job: the incoming_images_sensor records new and "
    "changed files and settings, and kseg_automation_sensor materialises what they change.",
)

#: The cross-image report (unpartitioned).
segmentation_report_job = dg.define_asset_job(
    name="segmentation_report_job",
    selection=dg.AssetSelection.assets(REPORT),
    executor_def=dg.in_process_executor,
    description="Rebuild the one-row-per-image segmentation report.",
)

#: Hash the incoming files and the settings now (the sensor does it as they change).
observe_images = dg.define_asset_job(
    name="observe_images",
    selection=dg.AssetSelection.assets(*SOURCES),
    executor_def=dg.in_process_executor,
    description="Observe the incoming image files (SHA-256) and the images' settings.",
)


class ColourSpace(StrEnum):
    """Colour space of the clustering features."""

    lab = "lab"
    rgb = "rgb"
    hsv = "hsv"


class Fallback(StrEnum):
    """How K is chosen when the elbow is not clear."""

    variance = "variance"
    knee = "knee"


class RegionSource(StrEnum):
    """The K-means clustering the regions start from."""

    chosen = "chosen"
    finest = "finest"


class StopFallback(StrEnum):
    """How the number of regions is chosen when the merge curve has no clear stop."""

    gap = "gap"
    threshold = "threshold"


class ImageSettingsRequest(dg.Config):
    """Give some images their own settings (kept until changed here or with kseg settings)."""

    images: list[str] = Field(
        description="Partition keys of the images (as the UI shows them, e.g. "
        "coffee-jpg-1f0c2d9e4a)."
    )
    k: int | None = Field(
        default=None,
        description=f"A fixed number of segments K for these images (1-{MAX_K}), instead of "
        "the elbow. To choose K automatically again, list k under forget.",
    )
    k_min: int | None = Field(
        default=None, description=f"Smallest K that may be chosen (1-{MAX_K})."
    )
    k_max: int | None = Field(
        default=None, description=f"Largest K tried and allowed (2-{MAX_K}, at least k_min)."
    )
    features: ColourSpace | None = Field(
        default=None, description="Colour space the pixels are clustered in."
    )
    spatial_weight: float | None = Field(
        default=None,
        description="How much pixel position counts next to colour (0-10; 0 = colour only).",
    )
    min_strength: float | None = Field(
        default=None, description="Knee strength (0-1) an elbow needs to count as clear."
    )
    fallback: Fallback | None = Field(
        default=None, description="Rule when there is no clear elbow."
    )
    variance_target: float | None = Field(
        default=None,
        description="Variance share K must explain under the variance fallback (0-1 exclusive).",
    )
    seed: int | None = Field(default=None, description=f"Random seed (0-{MAX_SEED}).")
    n_regions: int | None = Field(
        default=None,
        description=f"A fixed number of regions (1-{MAX_REGIONS}) instead of the merge "
        "curve's stop (typically after looking at region_map's merge curve). To stop "
        "automatically again, list n_regions under forget.",
    )
    max_cost: float | None = Field(
        default=None,
        description="Regions merge while a merge adds at most this to the mean squared Lab "
        "distance per pixel (above 0, at most 10000; higher: fewer, larger regions).",
    )
    min_share: float | None = Field(
        default=None,
        description="Size floor of a region as a share of the image (0.0001-0.1); smaller "
        "pieces are folded into their closest-coloured neighbour.",
    )
    stop_strength: float | None = Field(
        default=None, description="Strength (0-1) a stop needs to count as clear."
    )
    stop_fallback: StopFallback | None = Field(
        default=None, description="Rule when the merge curve has no clear stop."
    )
    gap_span: float | None = Field(
        default=None,
        description="How far the gap fallback looks around the threshold's count (0-4, a "
        "factor above 1).",
    )
    min_regions: int | None = Field(
        default=None, description=f"Fewest regions the stop may keep (1-{MAX_REGIONS})."
    )
    max_regions: int | None = Field(
        default=None, description=f"Most regions the stop may keep (1-{MAX_REGIONS})."
    )
    region_source: RegionSource | None = Field(
        default=None,
        description="The clustering regions start from: the chosen K, or the sweep's largest.",
    )
    forget: list[str] = Field(
        default=[],
        description="Own settings to drop first, back to the project's (e.g. [k]); [all] drops "
        "every one.",
    )

    def changes(self) -> dict[str, Any]:
        """The settings this request sets, with kseg's field names."""
        values = {
            "k_override": self.k,
            "k_min": self.k_min,
            "k_max": self.k_max,
            "features": self.features.value if self.features else None,
            "spatial_weight": self.spatial_weight,
            "min_strength": self.min_strength,
            "fallback": self.fallback.value if self.fallback else None,
            "variance_target": self.variance_target,
            "seed": self.seed,
            "n_regions": self.n_regions,
            "max_cost": self.max_cost,
            "min_share": self.min_share,
            "stop_strength": self.stop_strength,
            "stop_fallback": self.stop_fallback.value if self.stop_fallback else None,
            "gap_span": self.gap_span,
            "min_regions": self.min_regions,
            "max_regions": self.max_regions,
            "region_source": self.region_source.value if self.region_source else None,
        }
        return {name: value for name, value in values.items() if value is not None}

    def forgotten(self) -> list[str]:
        """The settings to drop (``k`` spelt as kseg's ``k_override``)."""
        return ["k_override" if name == "k" else name for name in self.forget]

    def problems(self) -> list[str]:
        """Every invalid part of the request, at once."""
        found = [
            f"images: {key!r} is not a kseg partition key"
            for key in self.images
            if not is_valid_partition_key(key)
        ]
        if not self.images:
            found.append("images: name at least one image")
        found += [
            f"{'k' if p.field == 'k_override' else p.field}: {p.message}"
            for p in change_problems(self.changes())
        ]
        if not self.changes() and not self.forget:
            found.append("nothing to change: set a value or list settings under forget")
        return found


def _validated(values: dict[str, Any]) -> dict[str, Any]:
    # Runs when the run is launched (a ConfigMapping), so a bad request is refused
    # before any run exists, naming every problem.
    config = ImageSettingsRequest(**values)
    problems = config.problems()
    if problems:
        raise ValueError(f"{len(problems)} invalid setting(s): " + "; ".join(problems))
    return {"ops": {"apply_image_settings": {"config": config.model_dump(mode="json")}}}


@dg.op(description="Save the images' own settings and record their new versions.")
def apply_image_settings(
    context: dg.OpExecutionContext,
    config: ImageSettingsRequest,
    storage: KsegStorage,
    settings: dg.ResourceParam[ProjectSettings],
) -> None:
    """Apply the request to every image, or (on any error) to none."""
    unknown = [
        key for key in config.images if not context.instance.has_dynamic_partition(
            PARTITIONS_NAME, key
        )
    ]  # fmt: skip
    if unknown:
        raise dg.Failure(f"no such image(s): {unknown}; use the partition keys the UI shows")
    try:
        images = update_own_settings(
            storage.store(),
            settings,
            config.images,
            config.changes(),
            config.forgotten(),
            updated_by=f"set_image_settings run {context.run_id}",
        )
    except KsegError as exc:
        raise dg.Failure(str(exc)) from exc
    for key, image in images.items():
        context.log_event(settings_observation(key, image))
        own = ", ".join(f"{k}={v}" for k, v in sorted(image.own.items())) or "none"
        context.log.info(f"{key}: own settings now {own}")


@dg.job(
    config=dg.ConfigMapping(
        config_fn=_validated, config_schema=ImageSettingsRequest.to_config_schema()
    ),
    executor_def=dg.in_process_executor,
    description="Give images their own settings (typically a fixed K after reading the elbow "
    "plot). Every value is checked when the run is launched. The images' settings versions "
    "change, and automation re-segments them with the new settings.",
)
def set_image_settings():
    apply_image_settings()


JOBS = [segment_images, segmentation_report_job, observe_images, set_image_settings]
