"""Tests of pipeline.features: the pixel table, the colour table and their Parquet form."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from skimage import color

from pipeline.colours import colour_histogram
from pipeline.errors import KsegError
from pipeline.features import (
    SCHEMA_VERSION,
    colour_table,
    feature_schema,
    feature_table,
    histogram_from_colour_table,
    image_from_feature_table,
    read_feature_table,
    write_feature_table,
)

SPACES = ("rgb", "lab", "hsv")
EXTRA = {"rgb": (), "lab": ("lab_l", "lab_a", "lab_b"), "hsv": ("hsv_h", "hsv_s", "hsv_v")}
REFERENCE = {"lab": color.rgb2lab, "hsv": color.rgb2hsv}


@pytest.fixture(scope="module")
def rgb(photo) -> np.ndarray:
    return photo("coffee", 96)


@pytest.mark.parametrize("features", SPACES)
def test_table_has_one_row_per_pixel_and_the_documented_schema(rgb, features):
    height, width = rgb.shape[:2]
    table = feature_table(rgb, features=features)
    assert table.num_rows == height * width
    assert table.column_names == ["x", "y", "r", "g", "b"]
    types = {f.name: f.type for f in table.schema}
    assert types["x"] == types["y"] == pa.uint16()
    for name in ("r", "g", "b"):
        assert types[name] == pa.uint8()
    for f in table.schema:
        assert not f.nullable, f.name
    for name in table.column_names:
        assert table.column(name).null_count == 0, name
    meta = table.schema.metadata
    assert meta[b"kseg.features"] == features.encode()
    assert meta[b"kseg.height"] == str(height).encode()
    assert meta[b"kseg.width"] == str(width).encode()
    assert meta[b"kseg.schema_version"] == SCHEMA_VERSION.encode()
    assert table.schema.equals(feature_schema(features, height=height, width=width))


@pytest.mark.parametrize("features", SPACES)
def test_table_values_are_the_pixels_in_row_major_order(rgb, features):
    height, width = rgb.shape[:2]
    table = feature_table(rgb, features=features)
    ys, xs = np.divmod(np.arange(height * width), width)
    np.testing.assert_array_equal(table.column("x").to_numpy(), xs)
    np.testing.assert_array_equal(table.column("y").to_numpy(), ys)
    flat = rgb.reshape(-1, 3)
    for i, name in enumerate("rgb"):
        np.testing.assert_array_equal(table.column(name).to_numpy(), flat[:, i])


@pytest.mark.parametrize("features", SPACES)
def test_the_colour_table_joined_on_rgb_gives_every_pixels_features(rgb, features):
    colours = colour_table(rgb, features=features)
    assert colours.column_names == ["r", "g", "b", "pixel_count", *EXTRA[features]]
    assert colours.schema.field("pixel_count").type == pa.int64()
    for name in EXTRA[features]:
        assert colours.schema.field(name).type == pa.float64()
    frame = colours.to_pandas()
    assert frame["pixel_count"].sum() == rgb.shape[0] * rgb.shape[1]
    assert not frame.duplicated(["r", "g", "b"]).any()
    pixels = feature_table(rgb, features=features).to_pandas()
    joined = pixels.merge(frame, on=["r", "g", "b"], how="left", validate="many_to_one")
    assert joined["x"].tolist() == pixels["x"].tolist()  # the join keeps the pixel order
    flat = rgb.reshape(-1, 3)
    counts = {
        tuple(c): n for c, n in zip(*np.unique(flat, axis=0, return_counts=True), strict=True)
    }
    assert [counts[c] for c in zip(frame["r"], frame["g"], frame["b"], strict=True)] == frame[
        "pixel_count"
    ].tolist()
    if features != "rgb":
        expected = REFERENCE[features](rgb).reshape(-1, 3)
        got = joined[list(EXTRA[features])].to_numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("features", SPACES)
def test_the_histogram_read_back_is_the_images_with_its_features(tmp_path, rgb, features):
    path = tmp_path / "colours.parquet"
    pq.write_table(colour_table(rgb, features=features), path)
    hist = histogram_from_colour_table(pq.read_table(path), where=str(path))
    expected = colour_histogram(rgb)
    np.testing.assert_array_equal(hist.colours, expected.colours)
    np.testing.assert_array_equal(hist.counts, expected.counts)
    assert hist.shape == expected.shape
    np.testing.assert_array_equal(hist.features(features), expected.features(features))


def test_a_bad_colour_table_is_refused_naming_it(rgb):
    table = colour_table(rgb, features="lab")
    short = table.slice(1)
    with pytest.raises(KsegError, match=r"^c\.parquet: pixel counts add up to \d+, expected"):
        histogram_from_colour_table(short, where="c.parquet")
    with pytest.raises(KsegError, match="not a kseg colour table"):
        histogram_from_colour_table(table.drop_columns(["lab_l"]), where="c.parquet")
    swapped = pa.concat_tables([table.slice(1, 1), table.slice(0, 1), table.slice(2)])
    with pytest.raises(KsegError, match="not distinct and sorted"):
        histogram_from_colour_table(swapped, where="c.parquet")
    with pytest.raises(KsegError, match="metadata"):
        histogram_from_colour_table(table.replace_schema_metadata({}), where="c.parquet")


def test_the_pixel_table_is_about_three_bytes_per_pixel_in_parquet(tmp_path, photo):
    # Schema 1 repeated float32 colour channels on every row: about 10 bytes per pixel.
    rgb = photo("astronaut", 256)
    size = write_feature_table(feature_table(rgb), tmp_path / "f.parquet")
    assert size / (rgb.shape[0] * rgb.shape[1]) < 3.5


def test_image_from_feature_table_gives_the_image_back(rgb):
    table = feature_table(rgb, features="lab")
    back = image_from_feature_table(table)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, rgb)


@pytest.mark.parametrize("features", SPACES)
def test_parquet_round_trip(tmp_path, rgb, features):
    table = feature_table(rgb, features=features)
    path = tmp_path / "features.parquet"
    size = write_feature_table(table, path)
    assert size == path.stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == ["features.parquet"]  # no temp file left
    meta = pq.ParquetFile(path).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    back = read_feature_table(path)
    assert back.equals(table)
    assert back.schema.metadata == table.schema.metadata
    np.testing.assert_array_equal(image_from_feature_table(back), rgb)


def test_parquet_is_much_smaller_than_raw(tmp_path, rgb):
    table = feature_table(rgb, features="lab")
    size = write_feature_table(table, tmp_path / "f.parquet")
    assert size < table.nbytes


def test_read_refuses_a_non_parquet_file(tmp_path):
    path = tmp_path / "not-parquet.parquet"
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not a parquet file at all")
    with pytest.raises(KsegError, match="not a readable Parquet") as info:
        read_feature_table(path)
    assert str(path) in str(info.value)


def test_read_refuses_a_missing_file(tmp_path):
    path = tmp_path / "missing.parquet"
    with pytest.raises(KsegError) as info:
        read_feature_table(path)
    assert str(path) in str(info.value)


def test_read_refuses_wrong_row_count(tmp_path, rgb):
    table = feature_table(rgb, features="rgb")
    short = table.slice(0, table.num_rows - 5)
    assert short.schema.metadata == table.schema.metadata
    path = tmp_path / "short.parquet"
    write_feature_table(short, path)
    height, width = rgb.shape[:2]
    with pytest.raises(KsegError) as info:
        read_feature_table(path)
    message = str(info.value)
    assert str(path) in message
    assert f"{table.num_rows - 5} rows" in message
    assert f"{height}x{width}" in message


def test_read_refuses_a_table_without_kseg_metadata(tmp_path):
    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"x": [1, 2], "r": [3, 4]}), path)
    with pytest.raises(KsegError, match="metadata") as info:
        read_feature_table(path)
    assert str(path) in str(info.value)


def test_image_from_table_with_wrong_rows_raises(rgb):
    table = feature_table(rgb, features="rgb").slice(0, 10)
    with pytest.raises(KsegError, match="10 rows"):
        image_from_feature_table(table)


def test_wide_image_uses_uint32_positions():
    rgb = np.zeros((1, 65_536, 3), dtype=np.uint8)
    rgb[0, :, 0] = np.arange(65_536) % 256
    table = feature_table(rgb, features="rgb")
    assert table.schema.field("x").type == pa.uint32()
    assert table.schema.field("y").type == pa.uint32()
    assert table.column("x").to_numpy()[-1] == 65_535
    np.testing.assert_array_equal(image_from_feature_table(table), rgb)


def test_unknown_features_refused(rgb):
    with pytest.raises(ValueError, match="unknown colour space 'cmyk'"):
        feature_table(rgb, features="cmyk")


def test_input_is_not_modified(photo):
    rgb = np.array(photo("chelsea", 64))
    before = rgb.copy()
    feature_table(rgb, features="lab")
    np.testing.assert_array_equal(rgb, before)
