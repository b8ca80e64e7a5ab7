"""Small helpers that turn outputs into Dagster metadata values.

Embedded pictures are kept small (a few KB): large metadata is refused upstream
with HTTP 413. Numbers are passed as plain ``int``/``float`` so the UI plots them
across materialisations and partitions.
"""

import base64
import math
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
import pandas as pd
import pyarrow as pa

__all__ = [
    "MAX_EMBED_BYTES",
    "column_schema",
    "file_link",
    "frame_table",
    "plain",
    "png_markdown",
    "rounded",
    "schema_metadata",
]

#: Largest picture embedded in metadata: large metadata has been refused upstream with
#: HTTP 413 (dagster-io/dagster#17189), so an event carries at most two such pictures.
MAX_EMBED_BYTES = 160_000


def plain(value: Any) -> Any:
    """A JSON-friendly scalar: numpy numbers to Python, NaN/inf and pandas' NA to None."""
    if value is pd.NA or value is pd.NaT:
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def png_markdown(png: bytes, *, alt: str, caption: str = "") -> dg.MetadataValue:
    """A markdown value showing a PNG or JPEG inline (base64), or a note if it is too big."""
    if len(png) > MAX_EMBED_BYTES:
        return dg.MetadataValue.md(f"*{alt}: {len(png)} bytes, too large to embed*")
    mime = "image/jpeg" if png[:2] == b"\xff\xd8" else "image/png"
    encoded = base64.b64encode(png).decode("ascii")
    text = f"![{alt}](data:{mime};base64,{encoded})"
    return dg.MetadataValue.md(f"{text}\n\n{caption}" if caption else text)


def rounded(value: float, digits: int = 4) -> float:
    """``value`` to ``digits`` significant digits, for reading (the tables keep it whole)."""
    value = float(value)
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def file_link(uri: str) -> dg.MetadataValue:
    """A stored file's location: a link for web URLs, a path for local files and
    object-store URLs (``s3://...``, shown as text to copy)."""
    if uri.startswith(("http://", "https://")):
        return dg.MetadataValue.url(uri)
    return dg.MetadataValue.path(uri)


def column_schema(
    schema: pa.Schema, descriptions: Mapping[str, str] | None = None
) -> dg.TableSchema:
    """A Dagster table schema (for ``dagster/column_schema``) from an Arrow schema."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=f.name,
                type=str(f.type),
                description=(descriptions or {}).get(f.name),
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


def _column_type(column: pd.Series) -> str:
    if pd.api.types.is_integer_dtype(column):
        return "int"
    if pd.api.types.is_float_dtype(column):
        return "float"
    return "string"


def _readable(value: Any) -> Any:
    value = plain(value)
    return rounded(value) if isinstance(value, float) else value


def frame_table(
    frame: pd.DataFrame,
    *,
    columns: Sequence[str] | None = None,
    max_rows: int = 64,
    descriptions: Mapping[str, str] | None = None,
) -> dg.MetadataValue:
    """A ``MetadataValue.table`` of (the first ``max_rows`` rows of) ``frame``, its
    numbers rounded to 4 significant digits for reading (the file keeps them whole)."""
    cols = list(columns or frame.columns)
    types = {c: _column_type(frame[c]) for c in cols}
    records = [
        dg.TableRecord(data={c: _readable(v) for c, v in zip(cols, row, strict=True)})
        for row in frame[cols].head(max_rows).itertuples(index=False)
    ]
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn(name=c, type=types[c], description=(descriptions or {}).get(c))
            for c in cols
        ]
    )
    return dg.MetadataValue.table(records=records, schema=schema)
