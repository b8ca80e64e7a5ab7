"""``segmentation_report``: one row per registered image, across all partitions.

The report reads each partition's manifests and ``chosen_k.json`` from the store
(small files; ``chosen_k``'s files are checked against their SHA-256 first and count
as missing if they do not match), never the outputs of every partition through an IO
manager. Its cache key hashes every partition's step keys, so an unchanged set of
images and outputs is a cache hit. It is written as Parquet and shown as a markdown table.
"""

import io
import json

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.plots import report_plot_png

from .automation import REPORT_CONDITION
from .checks import check_report_coverage
from .incoming import is_valid_partition_key
from .metadata import column_schema, frame_table, png_markdown
from .names import CHOSEN, GROUP_REPORT, IMAGE_ASSETS, REGION_MAP, REPORT
from .partitions import IMAGES
from .settings import ProjectSettings
from .steps.base import cache_key
from .storage import KsegStorage, Manifest, Store, parquet_bytes

__all__ = ["REPORT_COLUMNS", "report_rows", "segmentation_report"]

REPORT_FILE = "segmentation_report.parquet"
CODE_VERSION = "2"  # the file's content (2: the regions); its metadata is derived on every run
_COVERAGE = "covers_every_image"
_OUTPUT_FILES = {
    "raw_image": "raw_image.png",
    "segmented_image": "segmented_image.png",
    "label_map": "label_map.png",
    "segment_stats": "segment_stats.parquet",
    "region_map": "region_map.png",
    "region_stats": "region_stats.parquet",
}
#: Columns of the report, in order.
REPORT_COLUMNS = (
    "partition_key",
    "status",
    "source_path",
    "width",
    "height",
    "unique_colours",
    "chosen_k",
    "knee_strength",
    "reason",
    "rule",
    "wcss_at_k",
    "regions",
    "seconds",
    *(f"{name}_path" for name in _OUTPUT_FILES),
    "missing",
)
#: What each column of the report holds (shown with the schema in the UI).
COLUMN_DESCRIPTIONS = {
    "partition_key": "The image's partition key.",
    "status": "ok: every output stored; incomplete: some missing; missing: none yet.",
    "source_path": "The file's path in the incoming folder.",
    "width": "Width of the decoded image, in pixels.",
    "height": "Height of the decoded image, in pixels.",
    "unique_colours": "Number of distinct RGB colours of the image.",
    "chosen_k": "The number of segments K chosen.",
    "knee_strength": "How clear the elbow of the WCSS curve is, 0 to 1.",
    "reason": "elbow (clear), no_clear_elbow (the fallback decided) or override (a fixed K).",
    "rule": "The rule that decided K (elbow, variance, knee, override, ...).",
    "wcss_at_k": "Within-cluster sum of squares at the chosen K (feature units).",
    "regions": "The number of connected regions kept (region_map).",
    "seconds": "Compute time of all the image's steps, in seconds.",
    "raw_image_path": "Where the decoded image is stored.",
    "segmented_image_path": "Where the segmented image is stored.",
    "label_map_path": "Where the label map is stored.",
    "segment_stats_path": "Where the segment table is stored.",
    "region_map_path": "Where the region map is stored.",
    "region_stats_path": "Where the region table is stored.",
    "missing": "The steps whose outputs are missing, comma-separated.",
}
#: The columns of the table in the UI: the ones read at a glance (all are in the file).
_SHOWN = (
    "source_path", "status", "size", "chosen_k", "knee_strength", "reason", "regions", "seconds",
)  # fmt: skip
_SHOWN_DESCRIPTIONS = {**COLUMN_DESCRIPTIONS, "size": "Width x height, in pixels."}


def _row(store: Store, partition: str, manifests: dict[str, Manifest | None]) -> dict:
    present = {asset: m for asset, m in manifests.items() if m is not None}
    missing = [asset for asset in IMAGE_ASSETS if asset not in present]
    raw = present.get("raw_image")
    regions = present.get(REGION_MAP)
    chosen = None
    if CHOSEN in present:
        try:
            chosen = json.loads(store.read_bytes(partition, "chosen_k.json"))
        except (KeyError, ValueError, OSError):
            missing.append(CHOSEN)
    row = {
        "partition_key": partition,
        "status": "ok" if not missing else ("missing" if not present else "incomplete"),
        "source_path": raw.info.get("source_path") if raw else None,
        "width": raw.info.get("width") if raw else None,
        "height": raw.info.get("height") if raw else None,
        "unique_colours": raw.info.get("unique_colours") if raw else None,
        "chosen_k": chosen["chosen_k"] if chosen else None,
        "knee_strength": chosen["knee_strength"] if chosen else None,
        "reason": chosen["reason"] if chosen else None,
        "rule": chosen["rule"] if chosen else None,
        "wcss_at_k": chosen["wcss_at_k"] if chosen else None,
        "regions": regions.info.get("n_regions") if regions else None,
        "seconds": round(sum(m.seconds for m in present.values()), 4) if present else None,
        "missing": ",".join(missing),
    }
    for asset, name in _OUTPUT_FILES.items():
        row[f"{asset}_path"] = store.uri(partition, name) if asset in present else None
    return row


def report_rows(store: Store, partitions: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """The report table and the inputs of its cache key.

    Returns
    -------
    frame : pandas.DataFrame
        One row per partition, columns :data:`REPORT_COLUMNS`.
    inputs : list of str
        ``partition/asset/cache key`` for every partition and per-image asset.
    """
    rows, inputs = [], []
    for partition in partitions:
        manifests = {asset: store.manifest(partition, asset) for asset in IMAGE_ASSETS}
        chosen = manifests[CHOSEN]
        if chosen is not None and not store.verify(chosen):  # the files the report reads
            manifests[CHOSEN] = None  # damaged or half-replaced (a killed run): not "ok"
        inputs += [
            f"{partition}/{asset}/{m.cache_key if m else '-'}" for asset, m in manifests.items()
        ]
        rows.append(_row(store, partition, manifests))
    frame = pd.DataFrame(rows, columns=list(REPORT_COLUMNS))
    integers = {
        name: "Int64" for name in ("width", "height", "chosen_k", "unique_colours", "regions")
    }
    return frame.astype(integers), inputs


def _shown_table(stored: pd.DataFrame) -> dg.MetadataValue:
    """The report as a table that reads without scrolling sideways (the file has it all)."""
    view = stored.assign(
        size=[
            f"{w}x{h}" if pd.notna(w) else ""
            for w, h in zip(stored["width"], stored["height"], strict=True)
        ]
    )
    return frame_table(view, columns=list(_SHOWN), descriptions=_SHOWN_DESCRIPTIONS)


@dg.asset(
    name=REPORT,
    group_name=GROUP_REPORT,
    kinds={"python", "parquet"},
    code_version=CODE_VERSION,
    deps=list(IMAGE_ASSETS),
    automation_condition=REPORT_CONDITION,
    check_specs=[
        dg.AssetCheckSpec(
            _COVERAGE,
            asset=REPORT,
            description="The report has a complete row for every registered image.",
        )
    ],
    description="A summary with one row per registered image: status, size, chosen K, knee "
    "strength, WCSS at K, seconds and output paths (Parquet; a table in the metadata).",
)
def segmentation_report(
    context: dg.AssetExecutionContext,
    storage: KsegStorage,
    settings: dg.ResourceParam[ProjectSettings],
) -> dg.MaterializeResult:
    """One row per registered image: size, chosen K, strength, WCSS at K, seconds, outputs."""
    store = storage.store()
    registered = list(context.instance.get_dynamic_partitions(IMAGES.name))
    partitions = [key for key in registered if is_valid_partition_key(key)]
    ignored = sorted(set(registered) - set(partitions))
    if ignored:  # registered from outside kseg; the sensor removes them
        context.log.warning(
            f"ignoring {len(ignored)} partition key(s) no kseg image has: {ignored[:5]}"
        )
    frame, inputs = report_rows(store, partitions)
    key = cache_key(REPORT, code_version=CODE_VERSION, inputs=inputs, settings={})
    manifest = store.intact(None, REPORT, key)
    hit = manifest is not None
    if manifest is None:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        manifest = store.save(
            None,
            REPORT,
            cache_key=key,
            code_version=CODE_VERSION,
            files={REPORT_FILE: parquet_bytes(table)},
            info={"rows": len(frame), "complete": int((frame["status"] == "ok").sum())},
        )
    table = pq.read_table(io.BytesIO(store.read_bytes(None, REPORT_FILE)))
    stored = table.to_pandas()
    statuses = dict(zip(stored["partition_key"], stored["status"], strict=True))
    coverage = check_report_coverage(partitions, statuses)
    return dg.MaterializeResult(
        metadata={
            "cache": "hit" if hit else "miss",
            "cache_key": key,
            "path": dg.MetadataValue.path(store.uri(None, REPORT_FILE)),
            "bytes": manifest.files[REPORT_FILE].bytes,
            "dagster/row_count": table.num_rows,
            "dagster/column_schema": column_schema(table.schema, COLUMN_DESCRIPTIONS),
            "images": len(partitions),
            "ignored_keys": len(ignored),
            "complete": int((stored["status"] == "ok").sum()),
            "report": _shown_table(stored),
            "across_images": png_markdown(
                report_plot_png(
                    stored["chosen_k"].to_numpy(dtype=float, na_value=np.nan),
                    stored["knee_strength"].to_numpy(dtype=float, na_value=np.nan),
                    stored["seconds"].to_numpy(dtype=float, na_value=np.nan),
                    min_strength=settings.defaults.min_strength,
                ),
                alt="across images",
                caption="Chosen K, knee strength (the dashed line: a clear elbow) and "
                "compute seconds, over every segmented image.",
            ),
        },
        data_version=dg.DataVersion(key),
        check_results=[
            dg.AssetCheckResult(
                check_name=coverage.name,
                passed=coverage.passed,
                description=coverage.description,
                metadata=coverage.metadata,
            )
        ],
    )
