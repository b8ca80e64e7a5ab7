"""Jobs: the per-image job, the report job and the source observation job."""

import dagster as dg

from .keys import IMAGE_ASSETS, REPORT, SOURCE

__all__ = ["JOBS", "observe_images", "segment_images", "segmentation_report_job"]

#: Every per-image asset; runs in process (no subprocess per step). A run covers one
#: image or, in a backfill, a batch of images (the multi-asset's BackfillPolicy).
segment_images = dg.define_asset_job(
    name="segment_images",
    selection=dg.AssetSelection.assets(*IMAGE_ASSETS),
    executor_def=dg.in_process_executor,
    description="Decode, featurise, sweep K, choose K and segment the selected images.",
)

#: The cross-image report (unpartitioned).
segmentation_report_job = dg.define_asset_job(
    name="segmentation_report_job",
    selection=dg.AssetSelection.assets(REPORT),
    executor_def=dg.in_process_executor,
    description="Rebuild the one-row-per-image segmentation report.",
)

#: Hash the incoming files to refresh the sources' data versions (drives staleness).
observe_images = dg.define_asset_job(
    name="observe_images",
    selection=dg.AssetSelection.assets(SOURCE),
    executor_def=dg.in_process_executor,
    description="Observe the incoming image files (SHA-256 of each).",
)

JOBS = [segment_images, segmentation_report_job, observe_images]
