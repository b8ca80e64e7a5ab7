"""Small helpers that turn outputs into Dagster metadata values.

Embedded pictures are kept small (a few KB): large metadata is refused upstream
with HTTP 413. Numbers are passed as plain ``int``/``float`` so the UI plots them
across materialisations and partitions.
"""

import base64
import math
from collections.abc import Sequence
from typing import Any

import dagster as dg
import pandas as pd
import pyarrow as pa

__all__ = [
    "DECLARED_SCHEMAS",
    "MAX_EMBED_BYTES",
    "column_schema",
    "frame_table",
    "markdown_table",
    "plain",
    "png_markdown",
    "schema_metadata",
]

#: Largest PNG embedded in metadata; bigger pictures are linked by path instead.
MAX_EMBED_BYTES = 96_000


def plain(value: Any) -> Any:
    """A JSON-friendly scalar: numpy numbers to Python, NaN/inf to None."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def png_markdown(png: bytes, *, alt: str, caption: str = "") -> dg.MetadataValue:
    """A markdown value showing ``png`` inline (base64), or a note if it is too big."""
    if len(png) > MAX_EMBED_BYTES:
        return dg.MetadataValue.md(f"*{alt}: {len(png)} bytes, too large to embed*")
    encoded = base64.b64encode(png).decode("ascii")
    text = f"![{alt}](data:image/png;base64,{encoded})"
    return dg.MetadataValue.md(f"{text}\n\n{caption}" if caption else text)


def column_schema(schema: pa.Schema) -> dg.TableSchema:
    """A Dagster table schema (for ``dagster/column_schema``) from an Arrow schema."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=f.name,
                type=str(f.type),
                constraints=dg.TableColumnConstraints(nullable=f.nullable),
            )
            for f in schema
        ]
    )


def _declared_schemas() -> dict[str, dg.TableSchema]:
    from pipeline.features import feature_schema
    from pipeline.render import SEGMENT_COLUMNS
    from pipeline.settings import SegmentSettings
    from pipeline.sweep import METRIC_COLUMNS

    from .keys import ELBOW, FEATURES, STATS

    def table(columns: Sequence[str], ints: set[str]) -> pa.Schema:
        return pa.schema([(c, pa.int64() if c in ints else pa.float64()) for c in columns])

    counts = {"label", "pixel_count", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1", "n_components"}
    return {
        # Default settings and an image under 65,536 pixels a side (uint16 positions).
        FEATURES: column_schema(feature_schema(SegmentSettings().features, height=1, width=1)),
        ELBOW: column_schema(table(METRIC_COLUMNS, {"k", "k_effective", "iterations"})),
        STATS: column_schema(table(SEGMENT_COLUMNS, counts)),
    }


#: The column schema each table asset declares on its definition (``AssetSpec``
#: metadata). Declaring it there rather than on every materialisation matters: a
#: schema is dozens of nested records, and serialising them for each event was
#: over a tenth of the cost of re-materialising small images.
DECLARED_SCHEMAS = _declared_schemas()


def schema_metadata(asset: str, schema: pa.Schema) -> dict[str, dg.TableSchema]:
    """``dagster/column_schema`` for one materialisation, only if it differs from the
    declared one (other settings, a very large image, or a changed table)."""
    actual = column_schema(schema)
    if actual == DECLARED_SCHEMAS.get(asset):
        return {}
    return {"dagster/column_schema": actual}


def _cell(value: Any, digits: int) -> str:
    value = plain(value)
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(
    frame: pd.DataFrame,
    *,
    columns: Sequence[str] | None = None,
    max_rows: int = 50,
    digits: int = 4,
) -> str:
    """A markdown table of ``frame`` (first ``max_rows`` rows, floats to ``digits``)."""
    cols = list(columns or frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in frame[cols].head(max_rows).itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, digits) for v in row) + " |")
    if len(frame) > max_rows:
        lines.append(f"\n*{len(frame) - max_rows} more rows in the Parquet file*")
    return "\n".join(lines)


def _column_type(column: pd.Series) -> str:
    if pd.api.types.is_integer_dtype(column):
        return "int"
    if pd.api.types.is_float_dtype(column):
        return "float"
    return "string"


def frame_table(
    frame: pd.DataFrame, *, columns: Sequence[str] | None = None, max_rows: int = 64
) -> dg.MetadataValue:
    """A ``MetadataValue.table`` of (the first ``max_rows`` rows of) ``frame``."""
    cols = list(columns or frame.columns)
    types = {c: _column_type(frame[c]) for c in cols}
    records = [
        dg.TableRecord(data={c: plain(v) for c, v in zip(cols, row, strict=True)})
        for row in frame[cols].head(max_rows).itertuples(index=False)
    ]
    schema = dg.TableSchema(columns=[dg.TableColumn(name=c, type=types[c]) for c in cols])
    return dg.MetadataValue.table(records=records, schema=schema)
