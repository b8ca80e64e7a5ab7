"""``pixel_features``: the clustering input: a pixel table and a colour table (Parquet).

See :mod:`pipeline.features`: one row per pixel (position and colour) and one row per
distinct colour (its pixel count and colour-space channels), which the sweep reads.
"""

import io
from typing import Any

import pyarrow.parquet as pq

from pipeline.colours import colour_histogram
from pipeline.features import (
    SCHEMA_VERSION,
    colour_table,
    feature_schema,
    feature_table,
    histogram_from_colour_table,
)
from pipeline.settings import SegmentSettings

from ..checks import feature_rows_from_parquet
from ..metadata import schema_metadata
from ..names import FEATURES, GROUP_IMAGES, RAW
from ..storage import parquet_bytes
from .base import CheckDef, Computed, Inputs, Step, Stored
from .raw_image import decoded

__all__ = ["COLOURS_FILE", "FEATURES_FILE", "STEP", "feature_colours", "feature_rows"]

FEATURES_FILE = "pixel_features.parquet"
COLOURS_FILE = "pixel_colours.parquet"
# Default settings and an image under 65,536 pixels a side (uint16 positions).
_DECLARED = feature_schema(SegmentSettings().features, height=1, width=1)


def _compute(inputs: Inputs) -> Computed:
    features = inputs.settings.features
    rgb = decoded(inputs)
    table = feature_table(rgb, features=features)
    colours = colour_table(rgb, features=features, hist=colour_histogram(rgb))
    info = {
        "rows": table.num_rows,
        "columns": table.num_columns,
        "features": features,
        "colours": colours.num_rows,
    }
    files = {FEATURES_FILE: parquet_bytes(table), COLOURS_FILE: parquet_bytes(colours)}
    return Computed(files, info, value=table)


def _describe(stored: Stored) -> tuple[dict[str, Any], list]:
    raw = stored.inputs.manifest(RAW).info
    with stored.open(FEATURES_FILE) as stream:
        schema = pq.read_schema(stream)
        check = feature_rows_from_parquet(stream, int(raw["height"]), int(raw["width"]))
    metadata = {
        "dagster/row_count": stored.info["rows"],
        **schema_metadata(schema, _DECLARED),
        "colour_space": stored.info["features"],
        "distinct_colours": stored.info["colours"],
        "colour_table": f"{COLOURS_FILE}: one row per distinct colour with its pixel count "
        "and colour-space channels (what the sweep clusters); join on r, g, b",
    }
    return metadata, [check]


def feature_rows(inputs: Inputs):
    """The pixel table (pyarrow): from memory, or ``pixel_features.parquet``."""
    return inputs.value(
        FEATURES, lambda _: pq.read_table(io.BytesIO(inputs.read(FEATURES, FEATURES_FILE)))
    )


def feature_colours(inputs: Inputs):
    """The colour table as a :class:`~pipeline.colours.ColourHistogram` with its
    features, from ``pixel_colours.parquet`` (checked; a bad one raises KsegError)."""
    table = pq.read_table(io.BytesIO(inputs.read(FEATURES, COLOURS_FILE)))
    where = f"{inputs.partition}: {COLOURS_FILE}"
    return histogram_from_colour_table(table, where=where)


STEP = Step(
    asset=FEATURES,
    description="The clustering input (Parquet): one row per pixel with its position and RGB "
    "values, and (pixel_colours.parquet) one row per distinct colour with its pixel count "
    "and colour-space channels, which the sweep clusters.",
    group=GROUP_IMAGES,
    kinds=frozenset({"python", "parquet"}),
    code_version="2",  # 2: the colour channels in a colour table, not on every pixel
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
