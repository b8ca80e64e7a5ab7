"""``pixel_features``: the clustering input, one row per pixel (Parquet)."""

import io
from typing import Any

import pyarrow.parquet as pq

from pipeline.features import SCHEMA_VERSION, feature_schema, feature_table
from pipeline.settings import SegmentSettings

from ..checks import feature_rows_from_parquet
from ..metadata import schema_metadata
from ..names import FEATURES, GROUP_IMAGES, RAW
from ..storage import parquet_bytes
from .base import CheckDef, Computed, Inputs, Step, Stored
from .raw_image import decoded

__all__ = ["FEATURES_FILE", "STEP", "feature_rows"]

FEATURES_FILE = "pixel_features.parquet"
# Default settings and an image under 65,536 pixels a side (uint16 positions).
_DECLARED = feature_schema(SegmentSettings().features, height=1, width=1)


def _compute(inputs: Inputs) -> Computed:
    features = inputs.settings.features
    table = feature_table(decoded(inputs), features=features)
    info = {"rows": table.num_rows, "columns": table.num_columns, "features": features}
    return Computed({FEATURES_FILE: parquet_bytes(table)}, info, value=table)


def _describe(stored: Stored) -> tuple[dict[str, Any], list]:
    raw = stored.inputs.manifest(RAW).info
    with stored.open(FEATURES_FILE) as stream:
        schema = pq.read_schema(stream)
        check = feature_rows_from_parquet(stream, int(raw["height"]), int(raw["width"]))
    metadata = {
        "dagster/row_count": stored.info["rows"],
        **schema_metadata(schema, _DECLARED),
        "colour_space": stored.info["features"],
    }
    return metadata, [check]


def feature_rows(inputs: Inputs):
    """The feature table (pyarrow): from memory, or ``pixel_features.parquet``."""
    return inputs.value(
        FEATURES, lambda _: pq.read_table(io.BytesIO(inputs.read(FEATURES, FEATURES_FILE)))
    )


STEP = Step(
    asset=FEATURES,
    description="The clustering input: one row per pixel with its position, RGB values and "
    "colour-space channels (Parquet).",
    group=GROUP_IMAGES,
    kinds=frozenset({"python", "parquet"}),
    code_version="1",
    reads=(RAW,),
    settings=("features",),
    main_file=FEATURES_FILE,
    compute=_compute,
    describe=_describe,
    checks=(
        CheckDef("rows_match_pixels", "The feature table has height x width rows and no nulls."),
    ),
    column_schema=_DECLARED,
    constants={"schema_version": SCHEMA_VERSION},
)
