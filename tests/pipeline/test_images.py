"""Tests of pipeline.images: real files written in tmp_path, decoded by load_image."""

from __future__ import annotations

import io
import json
import os
import time
from functools import cache

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from pipeline.errors import ImageError, SettingsError
from pipeline.images import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_EXTENSIONS,
    LoadedImage,
    decode_image,
    load_image,
    to_rgb8,
)
from tests.mutations import mutate, mutation


def expected_16_to_8(values: np.ndarray) -> np.ndarray:
    """The documented 16-bit rule, computed independently: round(v * 255 / 65535)."""
    return np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)


def assert_refused(path, reason_part: str, **kwargs) -> ImageError:
    with pytest.raises(ImageError) as info:
        load_image(path, **kwargs)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)
    assert reason_part in info.value.reason
    return info.value


# --- round trips -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt", "save_kwargs"),
    [
        ("a.png", "PNG", {}),
        ("a.bmp", "BMP", {}),
        ("a.tif", "TIFF", {}),
        ("a.tiff", "TIFF", {"compression": "tiff_deflate"}),
        ("a.webp", "WEBP", {"lossless": True}),
    ],
)
def test_lossless_round_trip_is_exact(save_image, rgb_pattern, name, fmt, save_kwargs):
    pixels = rgb_pattern(16, 24)
    image = load_image(save_image(pixels, name, **save_kwargs))
    np.testing.assert_array_equal(image.rgb, pixels)
    assert (image.format, image.mode, image.width, image.height) == (fmt, "RGB", 24, 16)
    assert (image.orientation, image.bit_depth, image.n_frames, image.notes) == (1, 8, 1, ())


def test_gif_with_few_colours_round_trips_exactly(save_image):
    colours = np.array(
        [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30], [255, 255, 255]],
        dtype=np.uint8,
    )
    pixels = colours[(np.arange(16 * 24).reshape(16, 24) * 7) % len(colours)]
    image = load_image(save_image(pixels, "a.gif"))
    np.testing.assert_array_equal(image.rgb, pixels)
    assert (image.format, image.mode, image.n_frames) == ("GIF", "P", 1)
    assert "palette expanded" in image.notes


def test_jpeg_round_trip_within_tolerance(save_image):
    y, x = np.mgrid[0:48, 0:64]
    pixels = np.stack([x * 4, y * 5, 128 + 0 * x], axis=-1).astype(np.uint8)  # smooth ramps
    image = load_image(save_image(pixels, "a.jpg", quality=95))
    assert image.format == "JPEG" and image.rgb.shape == (48, 64, 3)
    diff = np.abs(image.rgb.astype(int) - pixels)
    assert diff.mean() < 2 and diff.max() <= 16


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1)])
def test_tiny_images(save_image, rgb_pattern, shape):
    pixels = rgb_pattern(*shape)
    image = load_image(save_image(pixels, "tiny.png"))
    np.testing.assert_array_equal(image.rgb, pixels)
    assert (image.height, image.width) == shape


def test_returned_array_is_readonly_owned_contiguous_uint8(save_image, rgb_pattern):
    image = load_image(save_image(rgb_pattern(5, 6), "a.png"))
    rgb = image.rgb
    assert rgb.shape == (5, 6, 3) and rgb.dtype == np.uint8
    assert rgb.flags.c_contiguous and rgb.flags.owndata and not rgb.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        rgb[0, 0, 0] = 1


def test_metadata_is_json_and_matches_fields(save_image, rgb_pattern):
    image = load_image(save_image(rgb_pattern(5, 6), "a.png"))
    meta = json.loads(json.dumps(image.metadata()))
    assert meta == {
        "path": image.path, "format": "PNG", "mode": "RGB", "width": 6, "height": 5,
        "orientation": 1, "bit_depth": 8, "n_frames": 1, "notes": [],
    }  # fmt: skip


def test_decode_image_matches_load_image_and_uses_name(save_image, rgb_pattern):
    path = save_image(rgb_pattern(), "a.png")
    from_bytes = decode_image(path.read_bytes(), name="upload #1")
    np.testing.assert_array_equal(from_bytes.rgb, load_image(path).rgb)
    assert from_bytes.path == "upload #1"
    with pytest.raises(ImageError, match=r"^upload #1: file is empty \(0 bytes\)$"):
        decode_image(b"", name="upload #1")


# --- bad files -------------------------------------------------------------------------


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    err = assert_refused(path, "file is empty (0 bytes)")
    assert err.reason == "file is empty (0 bytes)"


def test_truncated_jpeg(save_image):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = save_image(noise, "cut.jpg", quality=90)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert_refused(path, "truncated or corrupt image data (image file is truncated")


def test_truncated_png(save_image):
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = save_image(noise, "cut.png")
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 6 // 10])
    assert_refused(path, "truncated or corrupt image data")


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("notes.jpg", b"just some text, not a JPEG\n"),
        ("page.png", b"<!DOCTYPE html><html><body><img src='x.png'></body></html>\n"),
        ("signature-only.png", b"\x89PNG\r\n\x1a\n"),
    ],
)
def test_non_images_are_not_recognised(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    err = assert_refused(path, "not a recognised image format")
    assert err.reason == "not a recognised image format"


def test_formats_outside_the_supported_set_are_refused(save_image, rgb_pattern):
    # Pillow can read TGA, but the content-sniffing is limited to the supported formats.
    assert_refused(save_image(rgb_pattern(), "a.tga"), "not a recognised image format")


@pytest.mark.parametrize("size", [(0, 5), (5, 0)])
def test_zero_width_or_height_is_refused(tmp_path, craft_png, size):
    path = tmp_path / "zero.png"
    path.write_bytes(craft_png(*size))
    with pytest.raises(ImageError):
        load_image(path)


def test_directory_named_like_an_image(tmp_path):
    path = tmp_path / "x.jpg"
    path.mkdir()
    err = assert_refused(path, "is a directory")
    assert err.reason == "is a directory"


def test_missing_file(tmp_path):
    err = assert_refused(tmp_path / "nope.png", "no such file")
    assert err.reason == "no such file"


def test_path_through_a_regular_file(tmp_path):
    (tmp_path / "plain").write_bytes(b"x")
    assert_refused(tmp_path / "plain" / "a.png", "no such file (a parent is not a directory)")


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="root reads files whatever their mode, so chmod 000 cannot make one unreadable",
)
def test_permission_denied(save_image, rgb_pattern):
    path = save_image(rgb_pattern(), "locked.png")
    path.chmod(0)
    try:
        err = assert_refused(path, "permission denied")
        assert err.reason == "permission denied"
    finally:
        path.chmod(0o644)


def test_permission_denied_simulated(save_image, rgb_pattern, monkeypatch):
    # Runs as root too: the module's open() raises what an unreadable file would raise.
    import pipeline.images

    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    path = save_image(rgb_pattern(), "locked.png")
    monkeypatch.setattr(pipeline.images, "open", denied, raising=False)
    err = assert_refused(path, "permission denied")
    assert err.reason == "permission denied"


# --- pixel limit and decompression bombs -----------------------------------------------


def test_decompression_bomb_is_refused_quickly(tmp_path, craft_png):
    path = tmp_path / "bomb.png"
    path.write_bytes(craft_png(100_000, 100_000))  # 10^10 pixels declared, ~60 bytes on disk
    assert path.stat().st_size < 100
    start = time.perf_counter()
    err = assert_refused(path, "above the limit")
    assert time.perf_counter() - start < 1.0
    assert err.reason == (
        "image has 10000000000 pixels, above the limit of 100000000 (set max_pixels to raise it)"
    )


def test_size_in_pillows_warning_zone_never_warns(tmp_path, craft_png):
    # 90e6 pixels: above Pillow's MAX_IMAGE_PIXELS (warning) but below DEFAULT_MAX_PIXELS.
    # Warnings are errors in this suite, so an escaping DecompressionBombWarning would fail.
    assert Image.MAX_IMAGE_PIXELS < 90_000_000 < DEFAULT_MAX_PIXELS
    path = tmp_path / "big.png"
    path.write_bytes(craft_png(10_000, 9_000, colour_type=0))
    assert_refused(
        path, "image has 90000000 pixels, above the limit of 50000000", max_pixels=50_000_000
    )
    assert_refused(path, "truncated or corrupt image data")  # allowed, so decoded: no rows


def test_pillow_hard_limit_is_reported_when_max_pixels_is_above_it(tmp_path, craft_png):
    path = tmp_path / "huge.png"
    path.write_bytes(craft_png(20_000, 10_000))
    assert_refused(path, "raise PIL.Image.MAX_IMAGE_PIXELS", max_pixels=10**9)
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # global left alone


def test_real_image_above_configured_limit(save_image, rgb_pattern):
    path = save_image(rgb_pattern(10, 10), "a.png")
    err = assert_refused(path, "above the limit", max_pixels=99)
    assert err.reason == "image has 100 pixels, above the limit of 99 (set max_pixels to raise it)"
    assert load_image(path, max_pixels=100).rgb.shape == (10, 10, 3)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "100"])
def test_invalid_max_pixels_is_a_settings_error(save_image, rgb_pattern, bad):
    with pytest.raises(SettingsError, match="max_pixels"):
        load_image(save_image(rgb_pattern(), "a.png"), max_pixels=bad)


@pytest.mark.parametrize("bad", [(0, 0), (0, 0, 256), (0, 0, -1), (0.5, 0, 0), (1, 2, 3, 4)])
def test_invalid_background_is_a_settings_error(save_image, rgb_pattern, bad):
    with pytest.raises(SettingsError, match="background"):
        load_image(save_image(rgb_pattern(), "a.png"), background=bad)


# --- modes and depths ------------------------------------------------------------------


def test_greyscale_is_replicated(save_image):
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    image = load_image(save_image(grey, "g.png"))
    assert image.mode == "L"
    np.testing.assert_array_equal(image.rgb, np.repeat(grey[..., None], 3, axis=2))


def test_greyscale_with_alpha_is_composited(save_image):
    grey = Image.new("L", (3, 1), 100)
    alpha = Image.fromarray(np.array([[0, 128, 255]], dtype=np.uint8))
    image = load_image(save_image(Image.merge("LA", (grey, alpha)), "la.png"))
    assert image.mode == "LA"
    # round((100 * 128 + 255 * 127) / 255) = 177
    np.testing.assert_array_equal(image.rgb[0], [[255] * 3, [177] * 3, [100] * 3])
    assert "alpha composited on (255, 255, 255)" in image.notes


@pytest.mark.parametrize("background", [(255, 255, 255), (0, 0, 0), (12, 200, 77)])
def test_rgba_transparent_region_is_exactly_background(save_image, background):
    rgba = np.zeros((4, 6, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 30, 90)
    rgba[:, :2, 3] = 0  # fully transparent
    rgba[:, 2:4, 3] = 128  # half
    rgba[:, 4:, 3] = 255  # opaque
    image = load_image(save_image(rgba, "rgba.png"), background=background)
    assert image.mode == "RGBA"
    np.testing.assert_array_equal(image.rgb[:, :2], np.broadcast_to(background, (4, 2, 3)))
    half = np.round((np.array([200, 30, 90]) * 128 + np.array(background) * 127) / 255)
    np.testing.assert_array_equal(image.rgb[:, 2:4], np.broadcast_to(half, (4, 2, 3)))
    np.testing.assert_array_equal(image.rgb[:, 4:], np.broadcast_to((200, 30, 90), (4, 2, 3)))
    assert f"alpha composited on {background}" in image.notes


@pytest.mark.parametrize("transparent", [False, True])
def test_palette_png(save_image, transparent):
    pal = Image.new("P", (4, 2))
    pal.putpalette([10, 20, 30, 0, 255, 0] + [0] * 762)
    pal.putpixel((0, 0), 1)
    kwargs = {"transparency": 0} if transparent else {}
    image = load_image(save_image(pal, "p.png", **kwargs), background=(1, 2, 3))
    assert image.mode == "P" and "palette expanded" in image.notes
    expected = np.broadcast_to((1, 2, 3) if transparent else (10, 20, 30), (2, 4, 3)).copy()
    expected[0, 0] = (0, 255, 0)
    np.testing.assert_array_equal(image.rgb, expected)


def test_cmyk_jpeg_is_converted(save_image):
    image = load_image(save_image(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "c.jpg"))
    assert (image.format, image.mode) == ("JPEG", "CMYK")
    assert np.abs(image.rgb.astype(int) - (255, 0, 0)).max() <= 8
    assert "CMYK converted to RGB (no colour management)" in image.notes


def test_16bit_greyscale_png_is_scaled(save_image):
    values = np.array([[0, 1, 128, 129, 32768], [257, 65280, 65534, 65535, 1000]], np.uint16)
    image = load_image(save_image(values, "g16.png"))
    assert (image.mode, image.bit_depth) == ("I;16", 16)
    np.testing.assert_array_equal(image.rgb[..., 0], expected_16_to_8(values))
    np.testing.assert_array_equal(image.rgb[0, :, 0], [0, 0, 0, 1, 128])
    assert any(n.startswith("16-bit scaled to 8 bits") for n in image.notes)


def test_16bit_greyscale_tiff_is_scaled(tmp_path):
    values = (np.arange(20, dtype=np.uint32).reshape(4, 5) * 3449).astype(np.uint16)
    tifffile.imwrite(tmp_path / "g16.tif", values)
    image = load_image(tmp_path / "g16.tif")
    assert (image.format, image.mode, image.bit_depth) == ("TIFF", "I;16", 16)
    np.testing.assert_array_equal(image.rgb, np.repeat(expected_16_to_8(values)[..., None], 3, 2))


@pytest.mark.parametrize("planarconfig", ["contig", "separate"])
def test_16bit_rgb_tiff_is_scaled_exactly(tmp_path, planarconfig):
    # Pillow would keep only the high byte of 16-bit RGB; tifffile reads the full values.
    rng = np.random.default_rng(2)
    values = rng.integers(0, 65536, (6, 7, 3), dtype=np.uint16)
    data = values if planarconfig == "contig" else np.moveaxis(values, -1, 0)
    tifffile.imwrite(tmp_path / "rgb16.tif", data, photometric="rgb", planarconfig=planarconfig)
    image = load_image(tmp_path / "rgb16.tif")
    assert (image.format, image.mode, image.bit_depth) == ("TIFF", "RGB;16", 16)
    np.testing.assert_array_equal(image.rgb, expected_16_to_8(values))


def test_16bit_rgba_tiff_is_scaled_and_composited(tmp_path):
    values = np.zeros((2, 2, 4), np.uint16)
    values[..., :3] = 65535 // 3  # 21845 -> 85
    values[0, :, 3] = 65535
    tifffile.imwrite(
        tmp_path / "rgba16.tif", values, photometric="rgb", extrasamples=["unassalpha"]
    )
    image = load_image(tmp_path / "rgba16.tif", background=(0, 0, 0))
    assert image.mode == "RGBA;16"
    np.testing.assert_array_equal(image.rgb[0], [[85] * 3] * 2)
    np.testing.assert_array_equal(image.rgb[1], [[0] * 3] * 2)


def test_16bit_rgb_tiff_falls_back_to_pillow_when_tifffile_cannot_decode(tmp_path, monkeypatch):
    # e.g. an LZW strip without imagecodecs installed: Pillow (libtiff) keeps the high byte.
    def no_codec(self, *args, **kwargs):
        raise KeyError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")

    values = np.random.default_rng(5).integers(0, 65536, (3, 4, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", values, photometric="rgb")
    tifffile.imwrite(tmp_path / "f3.tif", values.astype(np.float32), photometric="rgb")
    monkeypatch.setattr(tifffile.TiffPage, "asarray", no_codec)
    image = load_image(tmp_path / "rgb16.tif")
    assert (image.mode, image.bit_depth) == ("RGB", 16)
    np.testing.assert_array_equal(image.rgb, values >> 8)
    assert "16-bit reduced to 8 bits by Pillow (high byte kept)" in image.notes
    assert_refused(tmp_path / "f3.tif", "requires the 'imagecodecs' package")  # Pillow can't


def test_16bit_rgb_png_is_within_one_level(tmp_path, craft_png):
    # Pillow decodes 16-bit RGB PNG to 8 bits itself (high byte); documented deviation.
    values = np.random.default_rng(3).integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)
    path = tmp_path / "rgb16.png"
    path.write_bytes(craft_png(6, 5, colour_type=2, bit_depth=16, raw=raw))
    image = load_image(path)
    assert (image.mode, image.bit_depth) == ("RGB", 16)
    np.testing.assert_array_equal(image.rgb, values >> 8)
    assert np.abs(image.rgb.astype(int) - expected_16_to_8(values)).max() <= 1
    assert "16-bit reduced to 8 bits by Pillow (high byte kept)" in image.notes


def test_float_tiff_with_nan_and_inf(tmp_path):
    values = np.array([[0.0, 0.5, np.nan], [np.inf, -np.inf, 1.0], [0.25, -0.5, 2e-3]], np.float32)
    tifffile.imwrite(tmp_path / "f.tif", values)
    image = load_image(tmp_path / "f.tif")
    assert (image.mode, image.bit_depth) == ("F", 32)
    # finite max 1.0 -> range [0, 1]; NaN, -inf -> 0; +inf -> 255; -0.5 clipped to 0
    np.testing.assert_array_equal(image.rgb[..., 1], [[0, 128, 0], [255, 0, 255], [64, 0, 1]])
    assert "NaN/inf replaced (NaN and -inf -> 0, +inf -> 255)" in image.notes
    assert "float values taken as [0, 1]" in image.notes


def test_float_rgb_tiff_in_0_255_range(tmp_path):
    # Pillow cannot open float RGB TIFFs at all; tifffile decodes them.
    values = np.array([[[0.0, 127.6, 255.0], [300.0, np.nan, np.inf]]], np.float32)
    tifffile.imwrite(tmp_path / "f3.tif", values, photometric="rgb")
    image = load_image(tmp_path / "f3.tif")
    assert (image.mode, image.bit_depth) == ("RGB;32F", 32)
    np.testing.assert_array_equal(image.rgb[0], [[0, 128, 255], [255, 0, 255]])
    assert "float values taken as [0, 255]" in image.notes
    assert "float values outside [0, 255] clipped" in image.notes


def test_animated_gif_uses_first_frame(save_image):
    frames = [Image.new("RGB", (8, 6), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = save_image(frames[0], "anim.gif", save_all=True, append_images=frames[1:])
    image = load_image(path)
    assert image.n_frames == 3 and "first of 3 frames used" in image.notes
    np.testing.assert_array_equal(image.rgb, np.broadcast_to((255, 0, 0), (6, 8, 3)))


def test_multipage_tiff_uses_first_page(tmp_path, rgb_pattern):
    pages = [rgb_pattern(4, 5), 255 - rgb_pattern(4, 5)]
    tifffile.imwrite(tmp_path / "pages.tif", np.stack(pages), photometric="rgb")
    image = load_image(tmp_path / "pages.tif")
    assert image.n_frames == 2
    np.testing.assert_array_equal(image.rgb, pages[0])


# --- orientation -----------------------------------------------------------------------


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def test_jpeg_exif_orientation_6_rotates_clockwise(save_image):
    pixels = np.full((32, 64, 3), 255, np.uint8)  # stored 64 wide x 32 tall
    pixels[:16, :16] = (255, 0, 0)  # red block at the stored top-left
    image = load_image(save_image(pixels, "o6.jpg", quality=95, exif=_exif(6)))
    assert (image.width, image.height, image.orientation) == (32, 64, 6)
    assert "EXIF orientation 6 applied" in image.notes
    # rotating 90 degrees clockwise takes the top-left corner to the top-right
    assert np.abs(image.rgb[2:14, 18:30].astype(int) - (255, 0, 0)).max() <= 12
    assert image.rgb[2:14, 2:14].min() >= 240


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow(save_image, rgb_pattern, orientation):
    path = save_image(rgb_pattern(5, 7), "o.png", exif=_exif(orientation))
    image = load_image(path)
    with Image.open(path) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    np.testing.assert_array_equal(image.rgb, expected)
    assert image.orientation == orientation
    assert (f"EXIF orientation {orientation} applied" in image.notes) == (orientation != 1)
    assert image.rgb.flags.c_contiguous


def test_tiff_orientation_tag_is_applied_on_tifffile_path(tmp_path):
    values = np.zeros((2, 3, 3), np.uint16)
    values[0, 0] = 65535
    tifffile.imwrite(
        tmp_path / "o.tif", values, photometric="rgb", extratags=[(274, "H", 1, 8, True)]
    )
    image = load_image(tmp_path / "o.tif")
    assert (image.orientation, image.width, image.height) == (8, 2, 3)
    # orientation 8 = rotate 90 degrees counter-clockwise: top-left goes to bottom-left
    np.testing.assert_array_equal(image.rgb[2, 0], [255, 255, 255])
    assert image.rgb.sum() == 3 * 255


def test_decoder_warnings_become_notes(tmp_path, craft_png):
    # An acTL chunk claiming 0 frames makes Pillow warn "Invalid APNG"; warnings are errors
    # in this suite, so the load would fail if the warning escaped.
    raw = b"\x00" + bytes([10, 20, 30]) * 2
    path = tmp_path / "odd.png"
    path.write_bytes(craft_png(2, 1, raw=raw, chunks=((b"acTL", bytes(8)),)))
    image = load_image(path)
    np.testing.assert_array_equal(image.rgb, [[[10, 20, 30]] * 2])
    assert any(n.startswith("decoder warning: Invalid APNG") for n in image.notes)


# --- paths and side effects ------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "with space.png",
        "a,b.png",
        "[x] (1).png",
        "ünïcødé 画像.png",
        "-leading-dash.png",
        "semi;colon.png",
    ],
)
def test_awkward_file_names_load(save_image, rgb_pattern, name):
    path = save_image(rgb_pattern(3, 4), name)
    image = load_image(path)
    assert image.path == str(path)
    np.testing.assert_array_equal(image.rgb, rgb_pattern(3, 4))


def test_path_may_be_str_or_pathlike(save_image, rgb_pattern):
    path = save_image(rgb_pattern(3, 4), "a.png")
    assert load_image(str(path)).path == load_image(path).path == str(path)


@pytest.mark.parametrize("name", ["a.png", "a.jpg", "a.tif", "a.gif"])
def test_input_file_is_not_modified(save_image, rgb_pattern, name):
    path = save_image(rgb_pattern(), name)
    os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    load_image(path)
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_supported_extensions():
    assert {
        ".jpg",
        ".jpeg",
        ".png",
        ".tif",
        ".tiff",
        ".bmp",
        ".webp",
        ".gif",
    } == SUPPORTED_EXTENSIONS
    assert all(ext == ext.lower() and ext.startswith(".") for ext in SUPPORTED_EXTENSIONS)


def test_loaded_image_is_frozen(save_image, rgb_pattern):
    image = load_image(save_image(rgb_pattern(), "a.png"))
    assert isinstance(image, LoadedImage)
    with pytest.raises(AttributeError):
        image.width = 3  # type: ignore[misc]


# --- to_rgb8 ---------------------------------------------------------------------------


def test_to_rgb8_rules():
    np.testing.assert_array_equal(to_rgb8(np.array([[True, False]])), [[[255] * 3, [0] * 3]])
    signed = np.array([[-5, 0, 32767]], np.int16)
    np.testing.assert_array_equal(to_rgb8(signed)[0, :, 0], [0, 0, 255])
    twelve_bit = np.array([[0, 2048, 4095]], np.uint16)
    np.testing.assert_array_equal(to_rgb8(twelve_bit, white=4095)[0, :, 0], [0, 128, 255])
    grey_alpha = np.array([[[200, 0], [200, 255]]], np.uint8)
    np.testing.assert_array_equal(
        to_rgb8(grey_alpha, background=(1, 2, 3)), [[[1, 2, 3], [200, 200, 200]]]
    )
    all_nan = np.full((2, 2), np.nan, np.float64)
    np.testing.assert_array_equal(to_rgb8(all_nan), np.zeros((2, 2, 3)))


def test_to_rgb8_returns_a_new_array():
    source = np.zeros((2, 2, 3), np.uint8)
    out = to_rgb8(source)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert not np.shares_memory(out, source)


@pytest.mark.parametrize("shape", [(4,), (2, 2, 5), (2, 2, 3, 1)])
def test_to_rgb8_refuses_bad_shapes(shape):
    with pytest.raises(ValueError, match="expected shape"):
        to_rgb8(np.zeros(shape, np.uint8))


# --- fuzzing ---------------------------------------------------------------------------


@cache
def _seed_files() -> dict[str, bytes]:
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    seeds = {}
    for fmt, kwargs in (("PNG", {}), ("JPEG", {"quality": 80}), ("GIF", {})):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, fmt, **kwargs)
        seeds[fmt] = buffer.getvalue()
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pixels.astype(np.uint16) * 257, photometric="rgb")
    seeds["TIFF16"] = buffer.getvalue()
    return seeds


_MUTATION = mutation(max_insert=16, max_delete=32, max_position=10_000)


@settings(max_examples=500, deadline=None)
@given(
    seed=st.sampled_from(["PNG", "JPEG", "GIF", "TIFF16"]),
    mutations=st.lists(_MUTATION, min_size=1, max_size=6),
)
def test_mutated_files_decode_or_raise_image_error(seed, mutations):
    data = mutate(_seed_files()[seed], mutations)
    try:
        image = decode_image(data, name="fuzz", max_pixels=1_000_000)
    except ImageError as err:
        assert err.path == "fuzz" and err.reason
        return
    assert image.rgb.dtype == np.uint8 and image.rgb.ndim == 3 and image.rgb.shape[2] == 3
    assert image.rgb.shape[:2] == (image.height, image.width)
    assert image.width * image.height <= 1_000_000
    assert image.rgb.flags.c_contiguous and not image.rgb.flags.writeable


def test_a_jpeg_with_thousands_of_header_segments_is_refused_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io

    from PIL import Image

    import pipeline.images as images
    from pipeline.errors import ImageError
    from pipeline.images import MAX_JPEG_SEGMENTS, decode_image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buffer, "JPEG")
    jpeg = buffer.getvalue()
    segment = b"\xff\xe1" + (65535).to_bytes(2, "big") + b"Exif\0\0" + b"\0" * 65527
    hostile = jpeg[:2] + segment * 2000 + jpeg[2:]
    real = images._read_pillow

    def never(*args, **kwargs):
        raise AssertionError("the decoder was reached")

    monkeypatch.setattr(images, "_read_pillow", never)
    with pytest.raises(ImageError, match=f"more than {MAX_JPEG_SEGMENTS} segments"):
        decode_image(hostile, name="many.jpg")
    monkeypatch.setattr(images, "_read_pillow", real)
    # A file well under the limit is still an image.
    fine = jpeg[:2] + segment * 20 + jpeg[2:]
    assert decode_image(fine, name="fine.jpg").rgb.shape == (64, 64, 3)
