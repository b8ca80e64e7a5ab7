"""Tests of pipeline.render: labels, painted image, overlay, segment table, PNG helpers."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import skimage.color
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from PIL import Image
from scipy import ndimage

from pipeline.colours import convert_colours
from pipeline.render import (
    SEGMENT_COLUMNS,
    boundaries_on,
    boundary_overlay,
    decode_png,
    encode_jpeg,
    encode_png,
    encode_segmented_png,
    neighbours_jpeg,
    preview_jpeg,
    segment,
    segment_table,
    thumbnail,
)
from pipeline.settings import SegmentSettings
from pipeline.sweep import sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAGENTA = np.array([255, 0, 255], dtype=np.uint8)


@pytest.fixture(scope="module")
def coffee(photo):
    """A small real photo, its K=6 Lab centres from the sweep, and its segmentation."""
    rgb = photo("coffee", 128)
    settings = SegmentSettings(k_min=2, k_max=6)
    result = sweep(rgb, settings)
    centres = result.centres[6]
    return rgb, centres, settings, segment(rgb, centres, settings), result


def expected_edges(labels: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour has another label, by explicit loops."""
    height, width = labels.shape
    edge = np.zeros(labels.shape, dtype=bool)
    for y in range(height):
        for x in range(width):
            if x + 1 < width and labels[y, x + 1] != labels[y, x]:
                edge[y, x] = True
            if y + 1 < height and labels[y + 1, x] != labels[y, x]:
                edge[y, x] = True
    return edge


# --- segment() -----------------------------------------------------------------------------


def test_labels_are_exactly_0_to_k_minus_1_as_uint8(coffee):
    rgb, centres, _, seg, _ = coffee
    assert seg.labels.shape == rgb.shape[:2]
    assert seg.labels.dtype == np.uint8
    assert seg.k == centres.shape[0] == 6
    np.testing.assert_array_equal(np.unique(seg.labels), np.arange(seg.k))


def test_labels_ordered_by_lightness_of_the_mean_colour(coffee):
    rgb, _, _, seg, _ = coffee
    flat = seg.labels.ravel()
    pixels = rgb.reshape(-1, 3).astype(np.float64)
    mean_rgb = np.array([pixels[flat == i].mean(axis=0) for i in range(seg.k)])
    lightness = skimage.color.rgb2lab((mean_rgb / 255).reshape(-1, 1, 3))[:, 0, 0]
    assert (np.diff(lightness) >= 0).all(), lightness


def test_labels_are_nearest_centres_up_to_the_ordering(coffee):
    rgb, centres, _, seg, _ = coffee
    lab = convert_colours(rgb.reshape(-1, 3), "lab")
    nearest = ((lab[:, None, :] - centres[None]) ** 2).sum(axis=2).argmin(axis=1)
    # One-to-one correspondence between raw cluster indices and output labels.
    pairs = np.unique(np.column_stack([nearest, seg.labels.ravel()]), axis=0)
    assert pairs.shape[0] == seg.k
    assert np.unique(pairs[:, 0]).size == np.unique(pairs[:, 1]).size == seg.k


def test_segmented_pixels_are_their_segment_mean_colour(coffee):
    rgb, _, _, seg, _ = coffee
    assert seg.segmented.shape == rgb.shape
    assert seg.segmented.dtype == np.uint8
    assert seg.colours.shape == (seg.k, 3)
    for i in range(seg.k):
        mask = seg.labels == i
        mean = np.rint(rgb[mask].astype(np.float64).mean(axis=0)).astype(np.uint8)
        np.testing.assert_array_equal(seg.colours[i], mean)
        assert (seg.segmented[mask] == mean).all()


def test_segmentation_wcss_is_exact(coffee):
    rgb, centres, _, seg, _ = coffee
    lab = convert_colours(rgb.reshape(-1, 3), "lab")
    expected = ((lab[:, None, :] - centres[None]) ** 2).sum(axis=2).min(axis=1).sum()
    assert seg.wcss == pytest.approx(expected, rel=1e-9)


def test_segment_drops_empty_clusters(coffee):
    rgb, centres, settings, _, _ = coffee
    far = np.array([[-500.0, 900.0, 900.0]])  # no pixel is nearest to this centre
    seg = segment(rgb, np.vstack([centres, far]), settings)
    assert seg.k == centres.shape[0]
    np.testing.assert_array_equal(np.unique(seg.labels), np.arange(seg.k))


def test_segment_is_deterministic_and_does_not_modify_input(coffee):
    rgb, centres, settings, seg, _ = coffee
    rgb = np.array(rgb)
    before = rgb.copy()
    again = segment(rgb, centres[::-1].copy(), settings)  # centre order must not matter
    np.testing.assert_array_equal(again.labels, seg.labels)
    np.testing.assert_array_equal(again.colours, seg.colours)
    np.testing.assert_array_equal(rgb, before)


def test_more_than_256_segments_use_uint16_labels():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    settings = SegmentSettings(features="rgb")
    flat = rgb.reshape(-1, 3)
    picks = rng.choice(flat.shape[0], size=300, replace=False)
    centres = np.unique(flat[picks], axis=0).astype(np.float64)
    seg = segment(rgb, centres, settings)
    assert seg.k == centres.shape[0] > 256
    assert seg.labels.dtype == np.uint16
    np.testing.assert_array_equal(np.unique(seg.labels), np.arange(seg.k))


# --- boundary_overlay -------------------------------------------------------------------------


def test_overlay_marks_exactly_the_boundary_pixels(coffee):
    rgb, _, _, seg, _ = coffee
    labels = seg.labels
    edge = expected_edges(labels)
    out = boundary_overlay(rgb, labels)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert (out[edge] == MAGENTA).all()
    np.testing.assert_array_equal(out[~edge], rgb[~edge])
    assert 0 < edge.sum() < edge.size


def test_overlay_on_small_random_labels_and_input_untouched():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, size=(9, 13))
    rgb = rng.integers(0, 200, size=(9, 13, 3), dtype=np.uint8)
    before = rgb.copy()
    out = boundary_overlay(rgb, labels)
    edge = expected_edges(labels)
    expected = rgb.copy()
    expected[edge] = MAGENTA
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(rgb, before)


def test_overlay_of_one_segment_is_the_image():
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    np.testing.assert_array_equal(boundary_overlay(rgb, np.zeros((4, 5), dtype=np.uint8)), rgb)


# --- segment_table ---------------------------------------------------------------------------


def check_segment_table(rgb: np.ndarray, labels: np.ndarray) -> None:
    table = segment_table(rgb, labels)
    height, width = labels.shape
    k = int(labels.max()) + 1
    assert list(table.columns) == list(SEGMENT_COLUMNS)
    assert len(table) == k
    assert table["label"].tolist() == list(range(k))
    assert int(table["pixel_count"].sum()) == height * width
    assert table["share"].sum() == pytest.approx(1.0, abs=1e-12)
    lab = convert_colours(rgb.reshape(-1, 3), "lab").reshape(height, width, 3)
    for row in table.itertuples(index=False):
        mask = labels == row.label
        ys, xs = np.nonzero(mask)
        assert row.pixel_count == mask.sum()
        assert row.share == pytest.approx(mask.sum() / labels.size)
        # Half-open bounding box, tight around the segment.
        assert (row.bbox_x0, row.bbox_y0) == (xs.min(), ys.min())
        assert (row.bbox_x1, row.bbox_y1) == (xs.max() + 1, ys.max() + 1)
        assert row.centroid_x == pytest.approx(xs.mean(), rel=1e-12)
        assert row.centroid_y == pytest.approx(ys.mean(), rel=1e-12)
        mean_rgb = rgb[mask].astype(np.float64).mean(axis=0)
        np.testing.assert_allclose([row.mean_r, row.mean_g, row.mean_b], mean_rgb, rtol=1e-12)
        np.testing.assert_allclose(
            [row.mean_lab_l, row.mean_lab_a, row.mean_lab_b], lab[mask].mean(axis=0), atol=1e-9
        )
        _, n_components = ndimage.label(mask)  # default structure: 4-connectivity
        assert row.n_components == n_components, f"label {row.label}"


def test_segment_table_of_a_real_segmentation(coffee):
    rgb, _, _, seg, _ = coffee
    check_segment_table(rgb, seg.labels)


def test_segment_table_known_components():
    """Diagonal neighbours are not connected (4-connectivity)."""
    labels = np.array(
        [
            [0, 1, 0, 0],
            [1, 0, 1, 1],
            [0, 1, 1, 2],
            [2, 2, 0, 2],
        ],
        dtype=np.uint8,
    )
    rgb = np.random.default_rng(1).integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    table = segment_table(rgb, labels)
    assert table["n_components"].tolist() == [5, 3, 2]
    check_segment_table(rgb, labels)


def test_segment_table_takes_the_pieces_the_regions_counted(coffee):
    """kseg segment hands the region stage's component counts to the table: the same
    table as counting again, and a count per segment is required."""
    from pipeline.regions import find_regions

    rgb, _, _, seg, _ = coffee
    regions = find_regions(rgb, seg.labels)
    assert regions.cluster_pieces.sum() == regions.n_components
    given = segment_table(rgb, seg.labels, n_components=regions.cluster_pieces)
    pd.testing.assert_frame_equal(given, segment_table(rgb, seg.labels))
    with pytest.raises(ValueError, match="one count per segment"):
        segment_table(rgb, seg.labels, n_components=regions.cluster_pieces[:-1])


def test_segment_table_random_labels():
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 5, size=(23, 31)).astype(np.uint8)
    rgb = rng.integers(0, 256, size=(23, 31, 3), dtype=np.uint8)
    check_segment_table(rgb, labels)


# --- PNG helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "array",
    [
        np.random.default_rng(0).integers(0, 256, size=(17, 23, 3), dtype=np.uint8),
        np.random.default_rng(1).integers(0, 12, size=(17, 23), dtype=np.uint8),
        np.random.default_rng(2).integers(0, 65_536, size=(17, 23), dtype=np.uint16),
        np.arange(300, dtype=np.uint16).reshape(15, 20),
    ],
    ids=["rgb-uint8", "labels-uint8", "labels-uint16", "labels-uint16-300"],
)
def test_png_round_trip(array):
    data = encode_png(array)
    assert data.startswith(PNG_MAGIC)
    back = decode_png(data)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        assert image.size == (array.shape[1], array.shape[0])


def test_png_round_trip_of_real_labels(coffee):
    _, _, _, seg, _ = coffee
    np.testing.assert_array_equal(decode_png(encode_png(seg.labels)), seg.labels)
    np.testing.assert_array_equal(decode_png(encode_png(seg.segmented)), seg.segmented)


def test_the_segmented_png_is_a_palette_of_the_segment_colours(coffee):
    _, _, _, seg, _ = coffee
    data = encode_segmented_png(seg)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.mode == "P"
        np.testing.assert_array_equal(np.asarray(image), seg.labels)  # the indices
        np.testing.assert_array_equal(np.asarray(image.convert("RGB")), seg.segmented)
    np.testing.assert_array_equal(decode_png(data), seg.segmented)


def test_more_than_256_segments_give_an_rgb_segmented_png():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
    flat = rgb.reshape(-1, 3)
    centres = np.unique(flat[rng.choice(flat.shape[0], 300, replace=False)], axis=0)
    seg = segment(rgb, centres.astype(np.float64), SegmentSettings(features="rgb"))
    assert seg.k > 256
    data = encode_segmented_png(seg)
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "RGB"
    np.testing.assert_array_equal(decode_png(data), seg.segmented)


def test_full_size_jpeg_keeps_one_pixel_magenta_lines(coffee):
    rgb, _, _, seg, _ = coffee
    drawn = boundary_overlay(rgb, seg.labels)
    edge = (drawn == [255, 0, 255]).all(axis=-1) & (rgb != [255, 0, 255]).any(axis=-1)
    data = encode_jpeg(drawn)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG" and image.size == (rgb.shape[1], rgb.shape[0])
        assert image.layer[0][1:3] == image.layer[1][1:3] == (1, 1)  # 4:4:4: no subsampling
        back = np.asarray(image)
    error = np.abs(back.astype(np.int16) - drawn)
    assert error.mean() < 6 and error[edge].mean() < 20
    subsampled = io.BytesIO()
    Image.fromarray(drawn).save(subsampled, format="JPEG", quality=92, subsampling=2)
    with Image.open(subsampled) as image:
        usual = np.abs(np.asarray(image).astype(np.int16) - drawn)
    assert error[edge].mean() < usual[edge].mean() / 2  # why 4:4:4


def test_thumbnail_never_upscales_and_keeps_aspect(photo):
    rgb = photo("rocket", None)
    small = thumbnail(rgb, height=100)
    assert small.shape[0] == 100
    assert small.shape[1] == round(rgb.shape[1] * 100 / rgb.shape[0])
    tiny = rgb[:50, :80]
    np.testing.assert_array_equal(thumbnail(tiny, height=100), tiny)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket"])
def test_the_preview_is_large_enough_to_judge_and_small_enough_to_embed(photo, name):
    rgb = photo(name, None)
    settings = SegmentSettings(k_max=6)
    centres = sweep(photo(name, 128), settings).centres[6]
    seg = segment(rgb, centres, settings)
    data = preview_jpeg(rgb, seg.segmented, seg.labels, height=300, max_bytes=150_000)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        width, height = image.size
        # As high as fits: 300 px, or the whole strip 1,000 px wide (never upscaled).
        assert width <= 1000 and height <= min(300, rgb.shape[0])
        assert height == min(300, rgb.shape[0]) or width >= 990
        assert height >= 150  # still large enough to judge, for every sample photo
        tile = round(rgb.shape[1] * height / rgb.shape[0])
        assert width == 3 * tile + 2 * 6
    assert len(data) <= 150_000, f"preview of {name} is {len(data)} bytes"


def test_a_wide_image_gets_a_lower_preview_that_fits_the_dialog():
    rgb = np.zeros((400, 1600, 3), dtype=np.uint8)
    rgb[:, 800:] = 200
    labels = (rgb[..., 0] > 0).astype(np.uint8)
    data = preview_jpeg(rgb, rgb, labels, height=300, max_width=1000)
    with Image.open(io.BytesIO(data)) as image:
        assert image.size[0] <= 1000 and image.size[1] == (1000 - 12) // 3 // 4


def test_boundaries_are_drawn_against_the_image_they_cross():
    labels = np.zeros((6, 8), dtype=np.uint8)
    labels[:, 4:] = 1
    for value, line in ((20, 255), (230, 0)):  # white on dark, black on light
        rgb = np.full((6, 8, 3), value, dtype=np.uint8)
        out = boundaries_on(rgb, labels)
        assert (out[:, 3:5] == line).all()  # the edge, two pixels wide
        assert (out[:, :3] == value).all() and (out[:, 5:] == value).all()
        assert (rgb == value).all()  # the input is not touched


def test_the_neighbouring_k_strip_has_one_panel_per_k(coffee):
    rgb, _, settings, _, result = coffee
    data = neighbours_jpeg(rgb, [result.centres[k] for k in (4, 5, 6)], settings, height=60)
    with Image.open(io.BytesIO(data)) as image:
        tile = round(rgb.shape[1] * 60 / rgb.shape[0]) if rgb.shape[0] > 60 else rgb.shape[1]
        assert image.size == (3 * tile + 2 * 6, min(60, rgb.shape[0]))


# --- properties -----------------------------------------------------------------------------


@st.composite
def images_and_centres(draw):
    height = draw(st.integers(1, 16))
    width = draw(st.integers(1, 16))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n_palette = draw(st.integers(1, 30))
    palette = rng.integers(0, 256, size=(n_palette, 3), dtype=np.uint8)
    rgb = palette[rng.integers(0, n_palette, size=(height, width))]
    features = draw(st.sampled_from(["lab", "rgb", "hsv"]))
    k = draw(st.integers(1, 8))
    pixels = convert_colours(rgb.reshape(-1, 3), features)
    centres = pixels[rng.integers(0, pixels.shape[0], size=k)] + rng.normal(0, 0.01, (k, 3))
    return rgb, centres, SegmentSettings(features=features)


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=images_and_centres())
def test_segment_properties(case):
    rgb, centres, settings = case
    seg = segment(rgb, centres, settings)
    height, width = rgb.shape[:2]
    assert seg.labels.shape == (height, width)
    assert seg.labels.dtype == np.uint8
    assert 1 <= seg.k <= centres.shape[0]
    np.testing.assert_array_equal(np.unique(seg.labels), np.arange(seg.k))
    flat = seg.labels.ravel()
    pixels = rgb.reshape(-1, 3).astype(np.float64)
    mean_rgb = np.array([pixels[flat == i].mean(axis=0) for i in range(seg.k)])
    lightness = skimage.color.rgb2lab((mean_rgb / 255).reshape(-1, 1, 3))[:, 0, 0]
    assert (np.diff(lightness) >= -1e-9).all()
    for i in range(seg.k):
        mask = seg.labels == i
        mean = np.rint(rgb[mask].astype(np.float64).mean(axis=0))
        assert (seg.segmented[mask] == mean).all()
    feats = convert_colours(rgb.reshape(-1, 3), settings.features)
    brute = ((feats[:, None, :] - centres[None]) ** 2).sum(axis=2).min(axis=1).sum()
    # Distances come from |x|^2 - 2 x.c + |c|^2, so near-zero WCSS carries a rounding
    # error of order n * eps * |x|^2 (absolute), not a relative one.
    rounding = 1e-12 * feats.shape[0] * (1 + (feats**2).sum(axis=1).max())
    assert seg.wcss == pytest.approx(brute, rel=1e-9, abs=rounding)
    edge = expected_edges(seg.labels)
    overlay = boundary_overlay(rgb, seg.labels)
    assert (overlay[edge] == MAGENTA).all()
    np.testing.assert_array_equal(overlay[~edge], rgb[~edge])
    check_segment_table(rgb, seg.labels)


def test_decoding_a_stored_png_of_90_megapixels_warns_nothing() -> None:
    import warnings

    from PIL import Image

    from pipeline.render import decode_png, encode_png

    labels = np.zeros((1, 1), dtype=np.uint8)
    data = encode_png(labels)
    # Pillow's bomb check looks at the size the header declares: lower its threshold
    # for this test instead of writing a 90-megapixel PNG.
    limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 0.5
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert decode_png(data).shape == (1, 1)
    finally:
        Image.MAX_IMAGE_PIXELS = limit
