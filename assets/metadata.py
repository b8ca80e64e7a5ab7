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


def schema_metadata(schema: pa.Schema, declared: pa.Schema | None) -> dict[str, dg.TableSchema]:
    """``dagster/column_schema`` for one materialisation, only if it differs from the
    schema its asset declares (other settings, a very large image, a changed table)."""
    if declared is not None and schema.remove_metadata().equals(declared.remove_metadata()):
        return {}
    return {"dagster/column_schema": column_schema(schema)}


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
