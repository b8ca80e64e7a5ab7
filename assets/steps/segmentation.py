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
    decode_png,
    encode_png,
    encode_segmented_png,
    neighbours_jpeg,
    preview_jpeg,
    segment,
    segment_table,
)
from pipeline.segment import centres_for

from ..checks import check_labels
from ..metadata import frame_table, png_markdown, rounded, schema_metadata
from ..names import CHOSEN, ELBOW, GROUP_SEGMENTATION, LABELS, RAW, SEGMENTED, STATS
from ..storage import parquet_bytes
from .base import CheckDef, Computed, Inputs, Step, Stored, cache_key
from .chosen_k import choice
from .elbow_metrics import swept
from .raw_image import decoded

__all__ = ["LABELS_FILE", "LABELS_STEP", "SEGMENTED_FILE", "SEGMENTED_STEP", "STATS_FILE",
           "STATS_STEP", "label_map"]  # fmt: skip

SEGMENTED_FILE = "segmented_image.png"
PREVIEW_FILE = "segmented_image_preview.jpg"
NEIGHBOURS_FILE = "segmented_image_neighbours.jpg"
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


def _neighbours(inputs: Inputs, k: int) -> list[int]:
    """K-1, K and K+1, as far as the sweep fitted them (each a distinct number of clusters)."""
    fitted = set(swept(inputs).table["k_effective"].astype(int))
    return [n for n in (k - 1, k, k + 1) if n in fitted and n >= 1]


def _segmented(inputs: Inputs) -> Computed:
    seg = _segmentation(inputs)
    rgb = decoded(inputs)
    preview = preview_jpeg(rgb, seg.segmented, seg.labels, height=300)
    ks = _neighbours(inputs, seg.k)
    centres = [centres_for(swept(inputs), k) for k in ks]
    strip = neighbours_jpeg(rgb, centres, inputs.settings, height=170)
    files = {
        SEGMENTED_FILE: encode_segmented_png(seg),
        PREVIEW_FILE: preview,
        NEIGHBOURS_FILE: strip,
    }
    return Computed(files, {"k": seg.k, "wcss": seg.wcss, "neighbours": ks})


def _describe_segmented(stored: Stored) -> tuple[dict[str, Any], list]:
    caption = "original | segmented | boundaries"
    k = int(stored.info["k"])
    ks = stored.info.get("neighbours", [k])
    key = stored.inputs.partition
    others = [n for n in ks if n != k]
    keep = (
        f"To keep another K for this image (say K={others[-1]}): launch the "
        f"**set_image_settings** job with `images: [{key}]` and `k: {others[-1]}`, or run "
        f"`kseg settings {key} --k {others[-1]}`; it is re-segmented with it and keeps it."
        if others
        else ""
    )
    shown = " | ".join(f"K={n}{' (chosen)' if n == k else ''}" for n in ks)
    metadata = {
        "k": k,
        "wcss": rounded(stored.info["wcss"]),
        "preview": png_markdown(stored.read(PREVIEW_FILE), alt=caption, caption=caption),
        "neighbouring_k": png_markdown(
            stored.read(NEIGHBOURS_FILE), alt="neighbouring K", caption=f"{shown}. {keep}"
        ),
    }
    return metadata, []


def _labels(inputs: Inputs) -> Computed:
    seg = _segmentation(inputs)
    info = {"k": seg.k, "dtype": str(seg.labels.dtype)}
    return Computed({LABELS_FILE: encode_png(seg.labels)}, info, value=seg.labels)


def label_map(inputs: Inputs):
    """The K-means label map: from memory, or ``label_map.png`` (for steps reading it)."""
    return inputs.value(LABELS, lambda _: decode_png(inputs.read(LABELS, LABELS_FILE)))


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


def _step(
    asset: str, description: str, kinds: set[str], main: str, compute, describe, **more
) -> Step:
    return Step(
        asset=asset,
        description=description,
        group=GROUP_SEGMENTATION,
        kinds=frozenset(kinds),
        # 2: labels ordered by the lightness of the mean RGB colour
        code_version=more.pop("code_version", "2"),
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
    code_version="3",  # 3: a readable preview and the neighbouring K
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
