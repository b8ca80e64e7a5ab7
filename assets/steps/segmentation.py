"""The three outputs of one segmentation: ``segmented_image``, ``label_map``, ``segment_stats``.

All three read the decoded image, the sweep's centres and the chosen K, and share one
segmentation per image and run (computed by the first of them that needs it).
"""

import io
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.render import (
    SEGMENT_COLUMNS,
    boundary_overlay,
    decode_png,
    encode_png,
    preview_png,
    segment,
    segment_table,
)
from pipeline.segment import centres_for

from ..checks import check_labels
from ..metadata import frame_table, png_markdown, schema_metadata
from ..names import CHOSEN, ELBOW, GROUP_SEGMENTATION, LABELS, RAW, SEGMENTED, STATS
from ..storage import parquet_bytes
from .base import CheckDef, Computed, Inputs, Step, Stored, cache_key
from .chosen_k import choice
from .elbow_metrics import swept
from .raw_image import decoded

__all__ = ["LABELS_FILE", "LABELS_STEP", "SEGMENTED_FILE", "SEGMENTED_STEP", "STATS_FILE",
           "STATS_STEP"]  # fmt: skip

SEGMENTED_FILE = "segmented_image.png"
PREVIEW_FILE = "segmented_image_preview.png"
LABELS_FILE = "label_map.png"
STATS_FILE = "segment_stats.parquet"
_READS = (RAW, ELBOW, CHOSEN)
_SETTINGS = ("features", "spatial_weight")
_COUNTS = {"label", "pixel_count", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1", "n_components"}
_STATS_SCHEMA = pa.schema(
    [(c, pa.int64() if c in _COUNTS else pa.float64()) for c in SEGMENT_COLUMNS]
)


def _segmentation(inputs: Inputs):
    """The image's segmentation (labels, colours, painted image), once per run."""
    values = inputs.settings.to_dict()
    key = cache_key(
        "segmentation",
        code_version="1",
        inputs=[inputs.key(name) for name in _READS],
        settings={name: values[name] for name in _SETTINGS},
    )

    def compute():
        centres = centres_for(swept(inputs), choice(inputs).k)
        return segment(decoded(inputs), centres, inputs.settings)

    return inputs.memo.get_or_load("segmentation", key, compute)


def _segmented(inputs: Inputs) -> Computed:
    seg = _segmentation(inputs)
    rgb = decoded(inputs)
    preview = preview_png(rgb, seg.segmented, boundary_overlay(rgb, seg.labels), height=96)
    files = {SEGMENTED_FILE: encode_png(seg.segmented), PREVIEW_FILE: preview}
    return Computed(files, {"k": seg.k, "wcss": seg.wcss})


def _describe_segmented(stored: Stored) -> tuple[dict[str, Any], list]:
    caption = "original | segmented | boundaries"
    metadata = {
        "k": int(stored.info["k"]),
        "wcss": float(stored.info["wcss"]),
        "preview": png_markdown(stored.read(PREVIEW_FILE), alt=caption, caption=caption),
    }
    return metadata, []


def _labels(inputs: Inputs) -> Computed:
    seg = _segmentation(inputs)
    info = {"k": seg.k, "dtype": str(seg.labels.dtype)}
    return Computed({LABELS_FILE: encode_png(seg.labels)}, info, value=seg.labels)


def _describe_labels(stored: Stored) -> tuple[dict[str, Any], list]:
    raw = stored.inputs.manifest(RAW).info
    height, width = int(raw["height"]), int(raw["width"])
    # Always the stored file: the check is about what the store holds.
    labels = decode_png(stored.read(LABELS_FILE))
    metadata = {
        "k": int(stored.info["k"]),
        "dtype": stored.info["dtype"],
        "height": height,
        "width": width,
    }
    return metadata, [check_labels(labels, height, width, choice(stored.inputs).k)]


def _stats(inputs: Inputs) -> Computed:
    seg = _segmentation(inputs)
    frame = segment_table(decoded(inputs), seg.labels)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return Computed({STATS_FILE: parquet_bytes(table)}, {"k": seg.k, "rows": len(frame)})


def _describe_stats(stored: Stored) -> tuple[dict[str, Any], list]:
    table = pq.read_table(io.BytesIO(stored.read(STATS_FILE)))
    columns = ["label", "pixel_count", "share", "mean_r", "mean_g", "mean_b", "n_components"]
    metadata = {
        "dagster/row_count": table.num_rows,
        **schema_metadata(table.schema, _STATS_SCHEMA),
        "segments": frame_table(table.to_pandas(), columns=columns),
    }
    return metadata, []


def _step(asset: str, description: str, kinds: set[str], main: str, compute, describe, **more):
    return Step(
        asset=asset,
        description=description,
        group=GROUP_SEGMENTATION,
        kinds=frozenset(kinds),
        code_version="2",  # 2: labels ordered by the lightness of the mean RGB colour
        reads=_READS,
        settings=_SETTINGS,
        main_file=main,
        compute=compute,
        describe=describe,
        **more,
    )


SEGMENTED_STEP = _step(
    SEGMENTED,
    "The segmented picture: every pixel painted with its segment's mean colour (PNG); its "
    "metadata shows a preview (original | segmented | boundaries).",
    {"python", "png"},
    SEGMENTED_FILE,
    _segmented,
    _describe_segmented,
)
LABELS_STEP = _step(
    LABELS,
    "The segment number of each pixel, 0..K-1, darkest segment first (8- or 16-bit greyscale PNG).",
    {"python", "png"},
    LABELS_FILE,
    _labels,
    _describe_labels,
    checks=(
        CheckDef(
            "labels_match_image", "The label map has the image's shape and labels exactly 0..K-1."
        ),
    ),
)
STATS_STEP = _step(
    STATS,
    "One row per segment: pixel count and share, mean colour, centroid, bounding box and "
    "number of connected pieces (Parquet).",
    {"python", "parquet"},
    STATS_FILE,
    _stats,
    _describe_stats,
    column_schema=_STATS_SCHEMA,
)
