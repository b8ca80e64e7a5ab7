"""The regions of one image: ``region_map``, ``region_boundaries``, ``region_stats``.

Connected regions merged from the K-means clusters (:mod:`pipeline.regions`): every
cluster of ``label_map`` is split into its 4-connected pieces, pieces below the size
floor are folded into their closest-coloured neighbour, and touching regions are
merged by least Ward cost until the merge curve says stop. All three steps read the
decoded image and the label map (and the sweep's centres, for ``region_source:
finest``) and share one region computation per image and run.
"""

import io
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.plots import merge_curve_png
from pipeline.regions import REGION_COLUMNS, Regions, find_regions, merges_to_arrow
from pipeline.render import boundaries_on, decode_png, encode_jpeg, encode_png, preview_jpeg
from pipeline.segment import region_clusters

from ..checks import check_labels, check_region_table, check_regions_connected
from ..metadata import frame_table, png_markdown, rounded, schema_metadata
from ..names import (
    ELBOW,
    GROUP_REGIONS,
    LABELS,
    RAW,
    REGION_BOUNDARIES,
    REGION_MAP,
    REGION_STATS,
)  # fmt: skip
from ..settings import REGION_FIELDS
from ..storage import parquet_bytes
from .base import CheckDef, Computed, Inputs, Step, Stored, cache_key
from .elbow_metrics import swept
from .raw_image import decoded
from .segmentation import label_map

__all__ = [
    "BOUNDARIES_FILE", "BOUNDARIES_STEP", "MAP_FILE", "MAP_STEP", "MERGES_FILE", "STATS_FILE",
    "STATS_STEP", "map_regions",
]  # fmt: skip

MAP_FILE = "region_map.png"
MERGES_FILE = "region_merges.parquet"
CURVE_FILE = "merge_curve.png"
BOUNDARIES_FILE = "region_boundaries.jpg"
PREVIEW_FILE = "region_boundaries_preview.jpg"
STATS_FILE = "region_stats.parquet"
_READS = (RAW, ELBOW, LABELS)
#: The region settings, and the segmentation's that the ``finest`` source re-segments with.
_SETTINGS = (*REGION_FIELDS, "features", "spatial_weight")
_COUNTS = {"region", "pixel_count", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1", "cluster"}
_STATS_SCHEMA = pa.schema(
    [(c, pa.int64() if c in _COUNTS else pa.float64()) for c in REGION_COLUMNS]
)


def _regions(inputs: Inputs) -> Regions:
    """The image's regions, once per run."""
    key = cache_key(
        "regions",
        code_version="1",
        inputs=[inputs.key(name) for name in _READS],
        settings={name: inputs.values[name] for name in _SETTINGS},
    )

    def compute() -> Regions:
        rgb = decoded(inputs)
        clusters = region_clusters(
            rgb, swept(inputs), label_map(inputs), inputs.settings, inputs.regions
        )
        return find_regions(rgb, clusters, inputs.regions)

    return inputs.memo.get_or_load("regions", key, compute)


def map_regions(inputs: Inputs) -> Regions:
    """The regions the stored region map was made of (for steps reading region_map).

    The ones this process computed when it made that map (kept in memory under the
    map's cache key), else computed again from the inputs. Not simply
    :func:`_regions` of the current inputs: while another run on the same image takes
    its turn between two steps of this one, label_map may already be that run's
    while region_map is still this run's, and the table must describe the stored map.
    """
    return inputs.value(REGION_MAP, lambda _: _regions(inputs))


def _map(inputs: Inputs) -> Computed:
    found = _regions(inputs)
    merges = found.merge_table()
    files = {
        MAP_FILE: encode_png(found.labels),
        MERGES_FILE: parquet_bytes(merges_to_arrow(found)),
        CURVE_FILE: merge_curve_png(merges, found.choice, max_cost=inputs.regions.max_cost),
    }
    info = {
        "n_regions": found.n_regions,
        "components": found.n_components,
        "folded": found.n_folded,
        "choice": found.choice.to_dict(),
        "dtype": str(found.labels.dtype),
    }
    return Computed(files, info, value=found)


def _describe_map(stored: Stored) -> tuple[dict[str, Any], list]:
    info = stored.info
    choice = info["choice"]
    raw = stored.inputs.manifest(RAW).info
    height, width = int(raw["height"]), int(raw["width"])
    n = int(info["n_regions"])
    # Always the stored file: the checks are about what the store holds.
    labels = decode_png(stored.read(MAP_FILE))
    metadata = {
        "n_regions": n,
        "stop_rule": choice["rule"],
        "stop_strength": rounded(choice["strength"], 3),
        "stop_reason": choice["reason"],
        "stop_detail": choice["detail"],
        "cluster_pieces": int(info["components"]),
        "after_folding": int(info["folded"]),
        "merge_curve": png_markdown(
            stored.read(CURVE_FILE),
            alt="the merge curve",
            caption=f"{choice['detail']}. The whole curve is in {MERGES_FILE}; to keep another "
            "count for this image, set its n_regions with the set_image_settings job or "
            "kseg settings --regions N.",
        ),
    }
    checks = [
        check_labels(labels, height, width, n, name="regions_contiguous", what="regions"),
        check_regions_connected(labels, n),
    ]
    return metadata, checks


def _painted(rgb: np.ndarray, labels: np.ndarray, table) -> np.ndarray:
    """Every pixel in its region's mean colour."""
    colours = table[["mean_r", "mean_g", "mean_b"]].to_numpy(dtype=np.float64)
    return np.clip(np.rint(colours), 0, 255).astype(np.uint8)[labels]


def _boundaries(inputs: Inputs) -> Computed:
    found = _regions(inputs)
    rgb = decoded(inputs)
    preview = preview_jpeg(rgb, _painted(rgb, found.labels, found.table), found.labels, height=300)
    files = {BOUNDARIES_FILE: encode_jpeg(boundaries_on(rgb, found.labels)), PREVIEW_FILE: preview}
    return Computed(files, {"n_regions": found.n_regions})


def _describe_boundaries(stored: Stored) -> tuple[dict[str, Any], list]:
    caption = "original | regions in their mean colour | region boundaries"
    metadata = {
        "n_regions": int(stored.info["n_regions"]),
        "preview": png_markdown(stored.read(PREVIEW_FILE), alt=caption, caption=caption),
    }
    return metadata, []


def _stats(inputs: Inputs) -> Computed:
    found = map_regions(inputs)
    table = pa.Table.from_pandas(found.table, preserve_index=False).cast(_STATS_SCHEMA)
    return Computed({STATS_FILE: parquet_bytes(table)}, {"rows": found.n_regions})


def _describe_stats(stored: Stored) -> tuple[dict[str, Any], list]:
    table = pq.read_table(io.BytesIO(stored.read(STATS_FILE)))
    frame = table.to_pandas()
    columns = ["region", "pixel_count", "share", "mean_r", "mean_g", "mean_b", "cluster"]
    largest = frame.sort_values("pixel_count", ascending=False, kind="stable").head(20)
    metadata = {
        "dagster/row_count": table.num_rows,
        **schema_metadata(table.schema, _STATS_SCHEMA),
        "largest_regions": frame_table(largest, columns=columns),
    }
    # Always the stored map: the check is about what the store holds.
    check = check_region_table(frame, decode_png(stored.inputs.read(REGION_MAP, MAP_FILE)))
    return metadata, [check]


def _step(asset: str, description: str, kinds: set[str], main: str, compute, describe, **more):
    return Step(
        asset=asset,
        description=description,
        group=GROUP_REGIONS,
        kinds=frozenset(kinds),
        code_version=more.pop("code_version", "1"),
        reads=more.pop("reads", _READS),
        settings=_SETTINGS,
        main_file=main,
        compute=compute,
        describe=describe,
        **more,
    )


MAP_STEP = _step(
    REGION_MAP,
    "The region of each pixel, 0..N-1 in raster order (8- or 16-bit greyscale PNG): the "
    "K-means clusters split into connected pieces, small pieces folded, touching regions "
    "merged until the merge curve's stop; its metadata shows the merge curve and the stop "
    "chosen, and region_merges.parquet holds the whole curve.",
    {"python", "png"},
    MAP_FILE,
    _map,
    _describe_map,
    checks=(
        CheckDef(
            "regions_contiguous", "The region map has the image's shape and labels exactly 0..N-1."
        ),
        CheckDef("regions_connected", "Every region is one 4-connected piece."),
    ),
)
BOUNDARIES_STEP = _step(
    REGION_BOUNDARIES,
    "The image with its region boundaries drawn, full size (JPEG, 4:4:4 chroma); its "
    "metadata shows a preview (original | regions | boundaries).",
    {"python", "jpeg"},
    BOUNDARIES_FILE,
    _boundaries,
    _describe_boundaries,
    code_version="2",  # 2: JPEG rather than PNG (a twentieth of the time at 48 MP)
)
STATS_STEP = _step(
    REGION_STATS,
    "One row per region: pixel count and share, mean colour (RGB and Lab), centroid, "
    "bounding box and the K-means cluster it came from (Parquet).",
    {"python", "parquet"},
    STATS_FILE,
    _stats,
    _describe_stats,
    reads=(*_READS, REGION_MAP),
    column_schema=_STATS_SCHEMA,
    checks=(
        CheckDef(
            "regions_match_table",
            "One row per region of the region map, numbered 0..N-1, with its exact pixel count.",
        ),
    ),
)
