"""The per-image steps, one module each, in topological order.

:data:`STEPS` maps each computed per-image asset to its :class:`~assets.steps.base.Step`;
:func:`chain_keys` derives every step's cache key from the file's SHA-256 and the image's
settings without reading any output (how ``kseg run`` and the schedule find stale images).
"""

from pipeline.settings import RegionSettings, SegmentSettings

from ..names import IMAGE_ASSETS, SOURCE
from ..settings import flat_values
from .base import Step
from .chosen_k import STEP as CHOSEN_STEP
from .elbow_metrics import STEP as ELBOW_STEP
from .pixel_features import STEP as FEATURES_STEP
from .raw_image import STEP as RAW_STEP
from .regions import BOUNDARIES_STEP, MAP_STEP
from .regions import STATS_STEP as REGION_STATS_STEP
from .segmentation import LABELS_STEP, SEGMENTED_STEP, STATS_STEP

__all__ = ["STEPS", "Step", "chain_keys"]

#: Every per-image step, by asset, in topological order.
STEPS: dict[str, Step] = {
    step.asset: step
    for step in (
        RAW_STEP,
        FEATURES_STEP,
        ELBOW_STEP,
        CHOSEN_STEP,
        SEGMENTED_STEP,
        LABELS_STEP,
        STATS_STEP,
        MAP_STEP,
        BOUNDARIES_STEP,
        REGION_STATS_STEP,
    )
}
assert tuple(STEPS) == IMAGE_ASSETS


def chain_keys(
    source_sha256: str, settings: SegmentSettings, regions: RegionSettings | None = None
) -> dict[str, str]:
    """The cache key of every per-image step for a file's content and its settings.

    Parameters
    ----------
    source_sha256 : str
        SHA-256 of the image file's bytes.
    settings : SegmentSettings
        The image's effective settings.
    regions : RegionSettings, optional
        The image's effective region settings (default: kseg's).

    Returns
    -------
    dict of str to str
        Asset name to cache key, for every asset of :data:`STEPS`.
    """
    values = flat_values(settings, RegionSettings() if regions is None else regions)
    keys = {SOURCE: source_sha256}
    for asset, step in STEPS.items():
        keys[asset] = step.key(keys, values)
    del keys[SOURCE]
    return keys
