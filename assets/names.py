"""Names other tooling relies on: asset keys, groups, partitions, run tags (no Dagster import).

Every step's own facts (code version, files, checks, description) live with the step
in :mod:`assets.steps`; this module only holds the names that several modules share.
"""

__all__ = [
    "BATCH_ENV",
    "BATCH_SIZE",
    "CHOSEN",
    "ELBOW",
    "FEATURES",
    "GROUP_IMAGES",
    "GROUP_REGIONS",
    "GROUP_REPORT",
    "GROUP_SEGMENTATION",
    "IMAGE_ASSETS",
    "IMAGE_POOL",
    "LABELS",
    "LAUNCHED_BY_TAG",
    "PARTITIONS_NAME",
    "PARTITION_TAG",
    "RANGE_END_TAG",
    "RANGE_START_TAG",
    "RAW",
    "REGION_BOUNDARIES",
    "REGION_MAP",
    "REGION_STATS",
    "REPORT",
    "SEGMENTED",
    "SETTINGS",
    "SOURCE",
    "SOURCES",
    "STATS",
]

#: Name of the ``DynamicPartitionsDefinition`` with one partition per image.
PARTITIONS_NAME = "images"

#: The two observed sources of every image: its file and its effective settings.
SOURCE = "source_image"
SETTINGS = "image_settings"
SOURCES = (SOURCE, SETTINGS)

RAW = "raw_image"
FEATURES = "pixel_features"
ELBOW = "elbow_metrics"
CHOSEN = "chosen_k"
SEGMENTED = "segmented_image"
LABELS = "label_map"
STATS = "segment_stats"
REGION_MAP = "region_map"
REGION_BOUNDARIES = "region_boundaries"
REGION_STATS = "region_stats"
REPORT = "segmentation_report"

#: The computed per-image assets, in topological order.
IMAGE_ASSETS = (
    RAW, FEATURES, ELBOW, CHOSEN, SEGMENTED, LABELS, STATS, REGION_MAP, REGION_BOUNDARIES,
    REGION_STATS,
)  # fmt: skip

GROUP_IMAGES = "images"
GROUP_SEGMENTATION = "segmentation"
GROUP_REGIONS = "regions"
GROUP_REPORT = "report"

#: Most partitions one run covers when a backfill (or ``kseg run``) takes many images.
BATCH_SIZE = 50
#: Environment variable that changes :data:`BATCH_SIZE`. The distributed profile sets
#: 1: every run is then one image, tagged ``dagster/partition``, which the run queue's
#: per-image limit sees (a range run is tagged with its ends only, so the limit cannot
#: see its images), and the images of a backfill spread over all workers.
BATCH_ENV = "KSEG_BATCH_SIZE"

#: Dagster concurrency pool of every per-image step. kseg's instance limits it at run
#: granularity (:func:`assets.instance.image_run_limit`): runs of images beyond the
#: limit wait in the run queue, so many large images dropped at once cannot exhaust
#: the machine's memory.
IMAGE_POOL = "kseg_images"

#: Dagster's run tags for one partition and for a range of partitions.
PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"

#: Run tag naming what launched a run that kseg requested itself (schedule, kseg run, ...).
LAUNCHED_BY_TAG = "kseg/launched_by"
