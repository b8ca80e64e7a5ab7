"""The feature tables of an image and their Parquet form.

A pixel's colour-space channels depend only on its colour, and the sweep works on the
distinct colours (:mod:`pipeline.colours`), so the features come in two tables:

**The pixel table** (:func:`feature_table`), one row per pixel in row-major order
(``y`` then ``x``): what each pixel is.

=========================  ==========  ==================================================
column                     type        meaning
=========================  ==========  ==================================================
``x``, ``y``               uint16      pixel column and row (uint32 if a side > 65535)
``r``, ``g``, ``b``        uint8       the normalised sRGB colour
=========================  ==========  ==================================================

**The colour table** (:func:`colour_table`), one row per distinct colour, sorted by its
packed 24-bit value: what the sweep clusters (each colour a point weighted by its
pixels). A pixel's features are its colour's row (join on ``r, g, b``).

=========================  ==========  ==================================================
column                     type        meaning
=========================  ==========  ==================================================
``r``, ``g``, ``b``        uint8       the colour
``pixel_count``            int64       pixels of that colour
``lab_l/lab_a/lab_b``      float64     CIE Lab (only when ``features="lab"``)
``hsv_h/hsv_s/hsv_v``      float64     HSV in 0-1 (only when ``features="hsv"``)
=========================  ==========  ==================================================

Schema metadata records ``kseg.features``, ``kseg.height``, ``kseg.width`` and
``kseg.schema_version`` so a reader can rebuild the image and check the row counts.
Position features for clustering are derived from ``x`` and ``y`` (see
:func:`pipeline.sweep.sweep`), not stored. Schema 1 repeated the colour channels on
every pixel row (float32): 10 bytes per pixel in Parquet against about 3 now.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .colours import COLOUR_CHANNELS, ColourHistogram, colour_histogram, pack_rgb
from .errors import KsegError
from .io import atomic_write

__all__ = [
    "SCHEMA_VERSION",
    "colour_schema",
    "colour_table",
    "feature_schema",
    "feature_table",
    "histogram_from_colour_table",
    "image_from_feature_table",
    "read_feature_table",
    "write_feature_table",
]

SCHEMA_VERSION = "2"


def _metadata(features: str, height: int, width: int) -> dict[str, str]:
    return {
        "kseg.features": features,
        "kseg.height": str(height),
        "kseg.width": str(width),
        "kseg.schema_version": SCHEMA_VERSION,
    }


def feature_schema(features: str, *, height: int, width: int) -> pa.Schema:
    """The Arrow schema of a pixel table.

    Parameters
    ----------
    features : {"rgb", "lab", "hsv"}
        Recorded in the schema metadata (the channels are in the colour table).
    height, width : int
        Image size, recorded in the schema metadata.

    Returns
    -------
    pyarrow.Schema
    """
    pos = pa.uint16() if max(height, width) <= 65535 else pa.uint32()
    fields = [pa.field("x", pos, False), pa.field("y", pos, False)]
    fields += [pa.field(c, pa.uint8(), False) for c in ("r", "g", "b")]
    return pa.schema(fields, metadata=_metadata(features, height, width))


def colour_schema(features: str, *, height: int, width: int) -> pa.Schema:
    """The Arrow schema of a colour table (see the module docstring)."""
    fields = [pa.field(c, pa.uint8(), False) for c in ("r", "g", "b")]
    fields.append(pa.field("pixel_count", pa.int64(), False))
    if features != "rgb":
        fields += [pa.field(c, pa.float64(), False) for c in COLOUR_CHANNELS[features]]
    return pa.schema(fields, metadata=_metadata(features, height, width))


def feature_table(rgb: np.ndarray, *, features: str = "lab") -> pa.Table:
    """Build the pixel table of an image.

    Parameters
    ----------
    rgb : (H, W, 3) ndarray of uint8
    features : {"lab", "rgb", "hsv"}

    Returns
    -------
    pyarrow.Table
        ``H * W`` rows with the schema of :func:`feature_schema`.
    """
    if features not in COLOUR_CHANNELS:
        raise ValueError(f"unknown colour space {features!r}")
    height, width = rgb.shape[:2]
    schema = feature_schema(features, height=height, width=width)
    pos_type = np.uint16 if schema.field("x").type == pa.uint16() else np.uint32
    xs = np.tile(np.arange(width, dtype=pos_type), height)
    ys = np.repeat(np.arange(height, dtype=pos_type), width)
    flat = rgb.reshape(-1, 3)
    columns = [xs, ys, flat[:, 0].copy(), flat[:, 1].copy(), flat[:, 2].copy()]
    return pa.Table.from_arrays([pa.array(c) for c in columns], schema=schema)


def colour_table(
    rgb: np.ndarray, *, features: str = "lab", hist: ColourHistogram | None = None
) -> pa.Table:
    """Build the colour table of an image: its distinct colours, counts and features.

    Colour-space values are computed once per distinct colour, exactly as the sweep
    computes them (float64).

    Parameters
    ----------
    rgb : (H, W, 3) ndarray of uint8
    features : {"lab", "rgb", "hsv"}
    hist : ColourHistogram, optional
        The colour histogram of ``rgb``, if the caller already has it.

    Returns
    -------
    pyarrow.Table
        One row per distinct colour with the schema of :func:`colour_schema`.
    """
    if features not in COLOUR_CHANNELS:
        raise ValueError(f"unknown colour space {features!r}")
    height, width = rgb.shape[:2]
    hist = colour_histogram(rgb) if hist is None else hist
    schema = colour_schema(features, height=height, width=width)
    columns = [np.ascontiguousarray(hist.colours[:, i]) for i in range(3)]
    columns.append(hist.counts.astype(np.int64))
    if features != "rgb":
        values = hist.features(features)
        columns += [np.ascontiguousarray(values[:, i]) for i in range(3)]
    return pa.Table.from_arrays([pa.array(c) for c in columns], schema=schema)


def histogram_from_colour_table(table: pa.Table, *, where: str) -> ColourHistogram:
    """The :class:`~pipeline.colours.ColourHistogram` a colour table holds, its
    colour-space features included (they are not converted again).

    Raises
    ------
    KsegError
        Naming ``where``, if the table is not a kseg colour table, its colours are
        not distinct and sorted, or its counts do not add up to the image's pixels.
    """
    height, width = _size(table, where)
    meta = table.schema.metadata or {}
    features = meta.get(b"kseg.features", b"").decode()
    expected = colour_schema(features or "rgb", height=height, width=width).remove_metadata()
    if (
        features not in COLOUR_CHANNELS
        or meta.get(b"kseg.schema_version") != SCHEMA_VERSION.encode()
        or not table.schema.remove_metadata().equals(expected)
    ):
        raise KsegError(f"{where}: not a kseg colour table (schema {SCHEMA_VERSION})")
    colours = np.column_stack([table.column(c).to_numpy() for c in ("r", "g", "b")])
    colours = colours.astype(np.uint8).reshape(-1, 3)
    counts = table.column("pixel_count").to_numpy().astype(np.int64)
    keys = pack_rgb(colours)
    if keys.size and (np.any(np.diff(keys.astype(np.int64)) <= 0) or counts.min() < 1):
        raise KsegError(f"{where}: colours are not distinct and sorted with positive counts")
    if int(counts.sum()) != height * width:
        raise KsegError(
            f"{where}: pixel counts add up to {int(counts.sum())}, expected {height}x{width}"
        )
    hist = ColourHistogram(colours=colours, counts=counts, shape=(height, width))
    if features != "rgb":
        names = COLOUR_CHANNELS[features]
        hist.with_features(features, np.column_stack([table.column(c).to_numpy() for c in names]))
    return hist


def write_feature_table(table: pa.Table, path: str | os.PathLike) -> int:
    """Write a feature table to Parquet (zstd), atomically.

    Returns
    -------
    int
        Size of the file written, in bytes.
    """
    with atomic_write(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", compression_level=3)
    return os.path.getsize(path)


def read_feature_table(path: str | os.PathLike) -> pa.Table:
    """Read a feature table written by :func:`write_feature_table` and check it.

    Raises
    ------
    KsegError
        If the file is not a readable feature table or its row count is wrong.
    """
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise KsegError(f"{path}: not a readable Parquet feature table ({exc})") from exc
    _check_table(table, str(path))
    return table


def image_from_feature_table(table: pa.Table) -> np.ndarray:
    """Rebuild the (H, W, 3) uint8 image from a feature table's ``r, g, b`` columns."""
    height, width = _check_table(table, "<feature table>")
    rgb = np.empty((height * width, 3), dtype=np.uint8)
    for i, name in enumerate(("r", "g", "b")):
        rgb[:, i] = table.column(name).to_numpy()
    return rgb.reshape(height, width, 3)


def _size(table: pa.Table, where: str) -> tuple[int, int]:
    meta = table.schema.metadata or {}
    try:
        return int(meta[b"kseg.height"]), int(meta[b"kseg.width"])
    except (KeyError, ValueError) as exc:
        raise KsegError(f"{where}: feature table lacks kseg.height/kseg.width metadata") from exc


def _check_table(table: pa.Table, where: str) -> tuple[int, int]:
    height, width = _size(table, where)
    if table.num_rows != height * width:
        raise KsegError(
            f"{where}: feature table has {table.num_rows} rows, expected {height}x{width}"
        )
    return height, width
