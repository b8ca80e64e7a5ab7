"""Tests of pipeline.colours: distinct-colour histograms, pixel index, colour spaces."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import color

from pipeline.colours import (
    COLOUR_CHANNELS,
    ColourHistogram,
    colour_histogram,
    convert_colours,
    pack_rgb,
)

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def brute_force_histogram(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct colours (sorted by r, then g, then b) and their counts, by np.unique."""
    colours, counts = np.unique(rgb.reshape(-1, 3), axis=0, return_counts=True)
    return colours, counts


def independent_keys(rgb: np.ndarray) -> np.ndarray:
    c = rgb.astype(np.int64)
    return (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]


# --- pack_rgb ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rgb", "key"),
    [((0, 0, 0), 0), ((255, 0, 0), 0xFF0000), ((0, 255, 0), 0x00FF00), ((1, 2, 3), 0x010203)],
)
def test_pack_rgb_known_keys(rgb, key):
    assert int(pack_rgb(np.array([rgb], dtype=np.uint8))[0]) == key


def test_pack_rgb_matches_shifts_on_a_photo(photo):
    rgb = photo("astronaut")
    keys = pack_rgb(rgb)
    assert keys.shape == rgb.shape[:2]
    assert keys.dtype == np.uint32
    np.testing.assert_array_equal(keys.astype(np.int64), independent_keys(rgb))


@pytest.mark.parametrize("shape", [(0, 3), (1, 3), (2, 3), (1, 1, 3), (7, 5, 3), (3, 4, 2, 3)])
def test_pack_rgb_any_shape_including_the_last_pixel(shape):
    # The packing borrows a byte from the next pixel; the last one has none.
    rgb = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    rgb.reshape(-1)[-3:] = 255  # (no-op when empty)
    keys = pack_rgb(rgb)
    assert keys.shape == shape[:-1] and keys.dtype == np.uint32
    np.testing.assert_array_equal(keys.astype(np.int64), independent_keys(rgb))


def test_pack_rgb_of_a_strided_view_leaves_the_image_alone(photo):
    rgb = photo("coffee")
    before = rgb.copy()
    view = rgb[::3, 1::2]
    np.testing.assert_array_equal(pack_rgb(view).astype(np.int64), independent_keys(view))
    np.testing.assert_array_equal(rgb, before)


# --- the histogram and pixel index, small images (binary-search path) -------------------------


@pytest.mark.parametrize("name", PHOTOS)
def test_histogram_of_photo_matches_brute_force(photo, name):
    rgb = photo(name)
    before = rgb.copy()
    hist = colour_histogram(rgb)
    height, width = rgb.shape[:2]
    assert isinstance(hist, ColourHistogram)
    assert hist.shape == (height, width)
    assert hist.n_pixels == height * width
    assert hist.colours.dtype == np.uint8
    assert hist.counts.dtype == np.int64
    assert int(hist.counts.sum()) == height * width
    assert (hist.counts > 0).all()
    keys = independent_keys(hist.colours)
    assert (np.diff(keys) > 0).all(), "colours must be distinct and sorted by packed key"
    colours, counts = brute_force_histogram(rgb)
    np.testing.assert_array_equal(hist.colours, colours)
    np.testing.assert_array_equal(hist.counts, counts)
    assert hist.n_colours == colours.shape[0]
    np.testing.assert_array_equal(rgb, before)


@pytest.mark.parametrize("name", PHOTOS)
def test_pixel_index_round_trips_the_photo(photo, name):
    rgb = photo(name)
    hist = colour_histogram(rgb)
    index = hist.pixel_index(rgb)
    assert index.shape == rgb.shape[:2]
    assert index.dtype == np.int32
    assert index.min() >= 0
    assert index.max() < hist.n_colours
    np.testing.assert_array_equal(hist.colours[index], rgb)
    np.testing.assert_array_equal(np.bincount(index.ravel(), minlength=hist.n_colours), hist.counts)


def test_histogram_of_a_single_colour_image():
    rgb = np.full((7, 5, 3), (10, 200, 30), dtype=np.uint8)
    hist = colour_histogram(rgb)
    np.testing.assert_array_equal(hist.colours, [[10, 200, 30]])
    np.testing.assert_array_equal(hist.counts, [35])
    np.testing.assert_array_equal(hist.pixel_index(rgb), np.zeros((7, 5)))


def test_a_histogram_without_its_index_maps_pixels_the_same(photo):
    rgb = photo("coffee")
    hist = colour_histogram(rgb)
    lab = hist.features("lab")
    light = hist.without_index()
    assert light.index is None and hist.index is not None
    assert light.features("lab") is lab  # converted colours are shared, not redone
    np.testing.assert_array_equal(light.pixel_index(rgb), hist.pixel_index(rgb))
    values = np.arange(hist.n_colours, dtype=np.int32) % 7
    np.testing.assert_array_equal(light.broadcast(rgb, values), hist.broadcast(rgb, values))


# --- large images (>= 2 million pixels: the 2**24 lookup-table path) --------------------------


@pytest.fixture(scope="module")
def big_random_image() -> np.ndarray:
    """1500 x 1400 = 2.1 million pixels: above the 2-million-pixel threshold from which
    ``pixel_index`` and ``broadcast`` go through a lookup table over all 2**24 colours.

    Half the pixels are drawn from a 512-colour palette so colours repeat; the rest
    are uniform random 24-bit colours.
    """
    rng = np.random.default_rng(1234)
    rgb = rng.integers(0, 256, size=(1500, 1400, 3), dtype=np.uint8)
    palette = rng.integers(0, 256, size=(512, 3), dtype=np.uint8)
    rgb[::2] = palette[rng.integers(0, 512, size=(750, 1400))]
    return rgb


def test_big_image_histogram_matches_np_unique(big_random_image):
    rgb = big_random_image
    assert rgb.shape[0] * rgb.shape[1] >= 2_000_000
    hist = colour_histogram(rgb)
    assert int(hist.counts.sum()) == rgb.shape[0] * rgb.shape[1]
    keys, counts = np.unique(independent_keys(rgb).ravel(), return_counts=True)
    np.testing.assert_array_equal(independent_keys(hist.colours), keys)
    np.testing.assert_array_equal(hist.counts, counts)
    assert (counts > 1).any() and (counts == 1).any()


def test_counting_in_chunks_agrees_with_sorting(big_random_image, monkeypatch):
    """The table path sums bincounts of chunks of keys: 1M-key chunks cut this image
    into two whole chunks and a partial one, and the sum is exactly the sorted runs."""
    from pipeline import colours as module

    monkeypatch.setattr(module, "_COUNT_CHUNK", 1 << 20)
    rgb = big_random_image
    hist = colour_histogram(rgb)
    keys = independent_keys(rgb).ravel().astype(np.uint32)
    assert keys.size > 2 * (1 << 20) and keys.size % (1 << 20)
    distinct, counts = module._sort_keys(keys)
    np.testing.assert_array_equal(independent_keys(hist.colours), distinct)
    np.testing.assert_array_equal(hist.counts, counts)
    assert hist.counts.dtype == np.int64 and hist.colours.dtype == np.uint8


def test_big_image_pixel_index_round_trips(big_random_image):
    rgb = big_random_image
    hist = colour_histogram(rgb)
    index = hist.pixel_index(rgb)
    assert index.shape == rgb.shape[:2]
    assert index.dtype == np.int32
    np.testing.assert_array_equal(hist.colours[index], rgb)


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 4), dtype=np.uint8),
        np.zeros((4, 4, 4), dtype=np.uint8),
        np.zeros((4, 4, 3), dtype=np.float64),
        np.zeros((4, 4, 3), dtype=np.uint16),
    ],
    ids=["grey", "rgba", "float", "uint16"],
)
def test_histogram_refuses_non_rgb8(bad):
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        colour_histogram(bad)


# --- colour-space conversion -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["astronaut", "coffee"])
@pytest.mark.parametrize(("space", "reference"), [("lab", color.rgb2lab), ("hsv", color.rgb2hsv)])
def test_convert_colours_matches_skimage_on_every_pixel(photo, name, space, reference):
    rgb = photo(name)
    hist = colour_histogram(rgb)
    converted = convert_colours(hist.colours, space)
    assert converted.shape == (hist.n_colours, 3)
    assert converted.dtype == np.float64
    per_pixel = converted[hist.pixel_index(rgb)]
    np.testing.assert_allclose(per_pixel, reference(rgb), rtol=0, atol=1e-9)


def test_convert_colours_rgb_is_the_values_as_float(photo):
    rgb = photo("chelsea")
    hist = colour_histogram(rgb)
    out = convert_colours(hist.colours, "rgb")
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, hist.colours.astype(np.float64))


@pytest.mark.parametrize(
    ("space", "low", "high"),
    [("lab", (0, -128, -128), (100, 128, 128)), ("hsv", (0, 0, 0), (1, 1, 1))],
)
def test_converted_ranges(space, low, high):
    rng = np.random.default_rng(5)
    colours = rng.integers(0, 256, size=(5000, 3), dtype=np.uint8)
    out = convert_colours(colours, space)
    assert (out >= np.array(low) - 1e-9).all()
    assert (out <= np.array(high) + 1e-9).all()


def test_convert_colours_known_values():
    colours = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0]], dtype=np.uint8)
    lab = convert_colours(colours, "lab")
    np.testing.assert_allclose(lab[0], [0, 0, 0], atol=1e-9)
    np.testing.assert_allclose(lab[1], [100, 0, 0], atol=1e-2)
    hsv = convert_colours(colours, "hsv")
    np.testing.assert_allclose(hsv[2], [0, 1, 1])


def test_convert_colours_unknown_space():
    with pytest.raises(ValueError, match="unknown colour space 'xyz'"):
        convert_colours(np.zeros((1, 3), dtype=np.uint8), "xyz")


def test_every_space_has_three_named_channels():
    assert set(COLOUR_CHANNELS) == {"rgb", "lab", "hsv"}
    names = [c for channels in COLOUR_CHANNELS.values() for c in channels]
    assert len(names) == len(set(names)) == 9


# --- broadcasting per-colour values to pixels ------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.float64])
def test_broadcast_gives_every_pixel_its_colours_value(photo, dtype):
    rgb = photo("rocket")
    hist = colour_histogram(rgb)
    values = (np.arange(hist.n_colours) % 251).astype(dtype)
    out = hist.broadcast(rgb, values)
    assert out.shape == rgb.shape[:2]
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, values[hist.pixel_index(rgb)])


def test_broadcast_on_the_lookup_table_path(big_random_image):
    rgb = big_random_image
    hist = colour_histogram(rgb)
    values = np.arange(hist.n_colours, dtype=np.int64) * 7
    np.testing.assert_array_equal(hist.broadcast(rgb, values), values[hist.pixel_index(rgb)])
