"""The per-pixel feature table and its Parquet form.

Schema (one row per pixel, row-major order: ``y`` then ``x``):

=========================  ==========  ==================================================
column                     type        meaning
=========================  ==========  ==================================================
``x``, ``y``               uint16      pixel column and row (uint32 if a side > 65535)
``r``, ``g``, ``b``        uint8       the normalised sRGB colour
``lab_l/lab_a/lab_b``      float32     CIE Lab (only when ``features="lab"``)
``hsv_h/hsv_s/hsv_v``      float32     HSV in 0-1 (only when ``features="hsv"``)
=========================  ==========  ==================================================

Schema metadata records ``kseg.features``, ``kseg.height``, ``kseg.width`` and
``kseg.schema_version`` so a reader can rebuild the image and check the row count.
Position features for clustering are derived from ``x`` and ``y`` (see
:func:`pipeline.sweep.sweep`), not stored.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .colours import COLOUR_CHANNELS, colour_histogram
from .errors import KsegError
from .io import atomic_write

__all__ = [
    "SCHEMA_VERSION",
    "feature_schema",
    "feature_table",
    "image_from_feature_table",
    "read_feature_table",
    "write_feature_table",
]

SCHEMA_VERSION = "1"


def feature_schema(features: str, *, height: int, width: int) -> pa.Schema:
    """The Arrow schema of a feature table.

    Parameters
    ----------
    features : {"rgb", "lab", "hsv"}
    height, width : int
        Image size, recorded in the schema metadata.

    Returns
    -------
    pyarrow.Schema
    """
    pos = pa.uint16() if max(height, width) <= 65535 else pa.uint32()
    fields = [pa.field("x", pos, False), pa.field("y", pos, False)]
    fields += [pa.field(c, pa.uint8(), False) for c in ("r", "g", "b")]
    if features != "rgb":
        fields += [pa.field(c, pa.float32(), False) for c in COLOUR_CHANNELS[features]]
    meta = {
        "kseg.features": features,
        "kseg.height": str(height),
        "kseg.width": str(width),
        "kseg.schema_version": SCHEMA_VERSION,
    }
    return pa.schema(fields, metadata=meta)


def feature_table(rgb: np.ndarray, *, features: str = "lab") -> pa.Table:
    """Build the per-pixel feature table of an image.

    Colour-space values are computed once per distinct colour and broadcast, which
    is exact and far cheaper than converting every pixel.

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
    if features != "rgb":
        hist = colour_histogram(rgb)
        values = hist.features(features).astype(np.float32)
        index = hist.pixel_index(rgb).ravel()
        columns += [values[index, i] for i in range(3)]
    return pa.Table.from_arrays([pa.array(c) for c in columns], schema=schema)


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


def _check_table(table: pa.Table, where: str) -> tuple[int, int]:
    meta = table.schema.metadata or {}
    try:
        height = int(meta[b"kseg.height"])
        width = int(meta[b"kseg.width"])
    except (KeyError, ValueError) as exc:
        raise KsegError(f"{where}: feature table lacks kseg.height/kseg.width metadata") from exc
    if table.num_rows != height * width:
        raise KsegError(
            f"{where}: feature table has {table.num_rows} rows, expected {height}x{width}"
        )
    return height, width
