"""Asset keys, groups, code versions and run constants, in one place (no Dagster import).

Other tooling and the tests refer to these names. Bump an asset's code version
whenever a change to it (or to the engine function it calls) changes its output:
the version is part of every cache key, so the next run recomputes that asset and
everything downstream, and Dagster marks the old materialisations as stale.
"""

__all__ = [
    "BATCH_SIZE",
    "CHECKS",
    "CODE_VERSIONS",
    "DESCRIBE_VERSION",
    "GROUP_IMAGES",
    "GROUP_REPORT",
    "GROUP_SEGMENTATION",
    "IMAGE_ASSETS",
    "PARTITIONS_NAME",
    "REPORT",
    "SOURCE",
]

#: Name of the ``DynamicPartitionsDefinition`` with one partition per image.
PARTITIONS_NAME = "images"

SOURCE = "source_image"
RAW = "raw_image"
FEATURES = "pixel_features"
ELBOW = "elbow_metrics"
CHOSEN = "chosen_k"
SEGMENTED = "segmented_image"
LABELS = "label_map"
STATS = "segment_stats"
REPORT = "segmentation_report"

#: The per-image assets computed by the ``image_steps`` multi-asset, in topological order.
IMAGE_ASSETS = (RAW, FEATURES, ELBOW, CHOSEN, SEGMENTED, LABELS, STATS)

GROUP_IMAGES = "images"
GROUP_SEGMENTATION = "segmentation"
GROUP_REPORT = "report"

#: Code version of each computed asset (part of its cache key).
CODE_VERSIONS = {
    RAW: "1",
    FEATURES: "1",
    ELBOW: "2",  # 2: coarse-to-fine search with greedy splits and removals
    CHOSEN: "2",
    SEGMENTED: "2",  # 2: labels ordered by the lightness of the mean RGB colour
    LABELS: "2",
    STATS: "2",
    REPORT: "1",
}

#: Version of the code that derives each step's metadata and check results from its
#: stored output (they are saved once per output and reused on cache hits): bump it
#: when that code changes what it reports, so saved descriptions are derived again.
DESCRIBE_VERSION = "1"

#: Asset checks: name -> the asset it checks.
CHECKS = {
    "rows_match_pixels": FEATURES,
    "wcss_non_increasing": ELBOW,
    "k_in_range": CHOSEN,
    "labels_match_image": LABELS,
    "covers_every_image": REPORT,
}

#: Partitions per run when a backfill (or ``kseg run``) materialises many images.
BATCH_SIZE = 50
