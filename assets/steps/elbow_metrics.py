"""``elbow_metrics``: the K sweep, one row per K (Parquet)."""

import io
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.features import image_from_feature_table
from pipeline.sweep import METRIC_COLUMNS, sweep, sweep_from_arrow, sweep_to_arrow

from ..checks import check_wcss_non_increasing
from ..metadata import frame_table, schema_metadata
from ..names import ELBOW, FEATURES, GROUP_SEGMENTATION
from ..storage import parquet_bytes
from .base import CheckDef, Computed, Inputs, Step, Stored
from .pixel_features import feature_colours, feature_rows

__all__ = ["ELBOW_FILE", "STEP", "swept"]

ELBOW_FILE = "elbow_metrics.parquet"
_INTS = {"k", "k_effective", "iterations"}
_DECLARED = pa.schema([(c, pa.int64() if c in _INTS else pa.float64()) for c in METRIC_COLUMNS])


def _compute(inputs: Inputs) -> Computed:
    # The sweep's input is the feature tables: the colour table's distinct colours,
    # counts and colour-space channels are the points it clusters; the pixel table's
    # r, g, b (in row order, their positions) give the spatial features.
    rgb = image_from_feature_table(feature_rows(inputs))
    result = sweep(rgb, inputs.settings, hist=feature_colours(inputs))
    info = {
        "n_colours": result.n_colours,
        "n_pixels": result.n_pixels,
        "strategy": result.strategy,
        "capped": result.capped,
        "sweep_seconds": float(result.table["seconds"].sum()),
    }
    return Computed({ELBOW_FILE: parquet_bytes(sweep_to_arrow(result))}, info, value=result)


def _load(inputs: Inputs, asset: str):
    return sweep_from_arrow(pq.read_table(io.BytesIO(inputs.read(asset, ELBOW_FILE))))


def _describe(stored: Stored) -> tuple[dict[str, Any], list]:
    result = stored.value(lambda _: sweep_from_arrow(pq.read_table(stored.open(ELBOW_FILE))))
    info = stored.info
    schema = pa.Schema.from_pandas(result.table[list(METRIC_COLUMNS)], preserve_index=False)
    metadata = {
        "dagster/row_count": len(result.table),
        **schema_metadata(schema, _DECLARED),
        "wcss_curve": frame_table(result.table, columns=list(METRIC_COLUMNS)),
        "unique_colours": info["n_colours"],
        "sweep_strategy": info["strategy"],
        "sweep_seconds": round(info["sweep_seconds"], 4),
    }
    return metadata, [check_wcss_non_increasing(result.k_values, result.wcss)]


def swept(inputs: Inputs):
    """The sweep (:class:`~pipeline.sweep.SweepResult`): from memory, or the Parquet file."""
    return inputs.value(ELBOW, lambda _: _load(inputs, ELBOW))


STEP = Step(
    asset=ELBOW,
    description="The K sweep: K-means for every K in the range, one row per K with WCSS "
    "(within-cluster sum of squares), explained variance, other quality indices, time, "
    "iterations and cluster centres (Parquet).",
    group=GROUP_SEGMENTATION,
    kinds=frozenset({"scikitlearn", "parquet"}),
    code_version="2",  # 2: coarse-to-fine search with greedy splits and removals
    reads=(FEATURES,),
    settings=("k_min", "k_max", "k_override", "features", "spatial_weight", "seed"),
    main_file=ELBOW_FILE,
    compute=_compute,
    describe=_describe,
    checks=(CheckDef("wcss_non_increasing", "WCSS never increases with K."),),
    column_schema=_DECLARED,
)
