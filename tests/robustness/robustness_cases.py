"""The bad and awkward inputs of issue 5, generated on the fly (no fixtures committed).

Each :class:`Case` writes one file and says what must happen to it: refused with a
reason (``error``), or processed with the documented conversion (``size``, ``k``,
``notes``, and a pixel check on the decoded RGB). The engine, ``kseg segment`` and
the Dagster tests all run the same catalogue.
"""

from __future__ import annotations

import io
import struct
import unicodedata
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

#: The pixel limit the tests configure (engine ``max_pixels``, ``--max-pixels``, and
#: ``robustness_dagster.pixel_limit`` in the Dagster tests); every "good" case is below it.
LIMIT = 5000
WHITE = (255, 255, 255)


def pattern(height: int, width: int) -> np.ndarray:
    """A deterministic (H, W, 3) uint8 image whose pixels mostly differ."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x * 37) % 256, (y * 53) % 256, (x * 11 + y * 7) % 256], -1).astype(np.uint8)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def crafted_png(width: int, height: int, *, colour_type: int = 2, bit_depth: int = 8, raw=b""):
    """A hand-made PNG declaring any size, with valid CRCs and ``raw`` filtered rows."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


def _save(image: Image.Image | np.ndarray, **kwargs) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        im = Image.fromarray(image) if isinstance(image, np.ndarray) else image
        im.save(path, **kwargs)

    return make


def _bytes(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def _truncated(fmt: str, keep: float) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        buffer = io.BytesIO()
        noise = np.random.default_rng(5).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(noise).save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        data = buffer.getvalue()
        path.write_bytes(data[: int(len(data) * keep)])

    return make


# --- 16-bit and float ------------------------------------------------------------------

DEEP = np.random.default_rng(6).integers(0, 65536, (4, 6, 3), dtype=np.uint16)
GREY16 = np.array([[0, 257, 32768, 65535], [1000, 40000, 65280, 128]], np.uint16)
FLOAT = np.array([[0.0, 0.5, np.nan], [np.inf, -np.inf, 1.0]], np.float32)


def _rule16(values: np.ndarray) -> np.ndarray:
    """The documented 16-bit rule, computed independently: round(v * 255 / 65535)."""
    return np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)


def _grey(values: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(values, np.uint8)[..., None], 3, axis=2)


def _png16_rgb(path: Path) -> None:
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in DEEP)
    path.write_bytes(crafted_png(6, 4, colour_type=2, bit_depth=16, raw=raw))


def _tiff(values: np.ndarray, **kwargs) -> Callable[[Path], None]:
    return lambda path: tifffile.imwrite(path, values, **kwargs)


# --- alpha, palette, CMYK, animation, orientation --------------------------------------


def _la() -> Image.Image:
    grey = Image.new("L", (3, 2), 100)
    alpha = Image.fromarray(np.array([[0, 128, 255], [0, 128, 255]], np.uint8))
    return Image.merge("LA", (grey, alpha))


RGBA = np.zeros((6, 8, 4), np.uint8)
RGBA[..., :3] = (200, 30, 90)
RGBA[:, 4:, 3] = 255  # left half fully transparent, right half opaque

PALETTE = [(10, 20, 30), (0, 255, 0), (250, 0, 120)]


def _palette() -> Image.Image:
    image = Image.new("P", (6, 4))
    image.putpalette([v for colour in PALETTE for v in colour] + [0] * (768 - 9))
    image.putdata([(i * 7) % 3 for i in range(24)])
    return image


def _palette_pixels() -> np.ndarray:
    return np.array(PALETTE, np.uint8)[np.array([(i * 7) % 3 for i in range(24)]).reshape(4, 6)]


def _gif(path: Path) -> None:
    frames = [Image.new("RGB", (8, 6), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(path, save_all=True, append_images=frames[1:])


def _exif_jpeg(path: Path) -> None:
    pixels = np.full((8, 16, 3), 255, np.uint8)  # stored 16 wide x 8 tall
    pixels[:8, :8] = (255, 0, 0)  # red square at the stored left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(pixels).save(path, quality=95, exif=exif)


def _two_colours() -> np.ndarray:
    checker = (np.add.outer(np.arange(12), np.arange(12)) % 2).astype(bool)
    return np.where(checker[..., None], [255, 0, 0], [0, 0, 255]).astype(np.uint8)


# --- expectations ----------------------------------------------------------------------


def _equal(expected: np.ndarray) -> Callable[[np.ndarray], None]:
    def check(rgb: np.ndarray) -> None:
        np.testing.assert_array_equal(rgb, expected)

    return check


def _close(expected, tolerance: int) -> Callable[[np.ndarray], None]:
    def check(rgb: np.ndarray) -> None:
        diff = np.abs(rgb.astype(int) - np.broadcast_to(expected, rgb.shape))
        assert diff.max() <= tolerance, diff.max()

    return check


def _rgba_check(rgb: np.ndarray) -> None:
    np.testing.assert_array_equal(rgb[:, :4], np.broadcast_to(WHITE, (6, 4, 3)))
    np.testing.assert_array_equal(rgb[:, 4:], np.broadcast_to((200, 30, 90), (6, 4, 3)))


def _exif_check(rgb: np.ndarray) -> None:
    # Upright: 8 wide, 16 tall; the stored left half (red) is now the top half.
    assert np.abs(rgb[1:7, 1:7].astype(int) - (255, 0, 0)).max() <= 16
    assert rgb[10:15, 1:7].min() >= 235


@dataclass(frozen=True)
class Case:
    """One input file and what must happen to it.

    Attributes
    ----------
    id : str
        Test id.
    name : str
        File name in the incoming folder.
    make : callable
        ``make(path)`` writes the file.
    error : str, optional
        Part of the refusal reason; None when the file must be processed.
    size : (width, height), optional
        Upright size of a processed image.
    k : int, optional
        The chosen K (default settings), when it is forced by the image.
    n_colours : int, optional
        Distinct colours after conversion.
    notes : tuple of str
        Conversion notes that must be reported.
    pixels : callable, optional
        ``pixels(rgb)`` asserts on the decoded (H, W, 3) uint8 image.
    """

    id: str
    name: str
    make: Callable[[Path], None]
    error: str | None = None
    size: tuple[int, int] | None = None
    k: int | None = None
    n_colours: int | None = None
    notes: tuple[str, ...] = ()
    pixels: Callable[[np.ndarray], None] | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def write(self, folder: Path) -> Path:
        path = folder / self.name
        path.parent.mkdir(parents=True, exist_ok=True)
        self.make(path)
        return path


NFC_NAME = unicodedata.normalize("NFC", "café.png")
NFD_NAME = unicodedata.normalize("NFD", "café.png")
_SMALL = pattern(6, 8)

#: Every file case of the issue's list (file-system cases have their own tests).
CASES: tuple[Case, ...] = (
    Case("zero_byte", "empty.png", _bytes(b""), error="file is empty (0 bytes)"),
    Case("truncated_jpeg", "cut.jpg", _truncated("JPEG", 0.5), error="truncated or corrupt image"),
    Case("truncated_png", "cut.png", _truncated("PNG", 0.6), error="truncated or corrupt image"),
    Case(
        "text_as_jpg",
        "notes.jpg",
        _bytes(b"just some text, not a JPEG\n"),
        error="not a recognised image format",
    ),
    Case(
        "html_as_png",
        "page.png",
        _bytes(b"<!DOCTYPE html><html><body><img src='x.png'></body></html>\n"),
        error="not a recognised image format",
    ),
    Case(
        "one_by_one",
        "dot.png",
        _save(np.full((1, 1, 3), 9, np.uint8)),
        size=(1, 1),
        k=1,
        n_colours=1,
        pixels=_equal(np.full((1, 1, 3), 9, np.uint8)),
    ),
    Case(
        "one_by_n",
        "row.png",
        _save(pattern(1, 12)),
        size=(12, 1),
        pixels=_equal(pattern(1, 12)),
    ),
    Case(
        "n_by_one",
        "column.png",
        _save(pattern(12, 1)),
        size=(1, 12),
        pixels=_equal(pattern(12, 1)),
    ),
    Case(
        "single_colour",
        "flat.png",
        _save(np.full((12, 12, 3), (40, 90, 200), np.uint8)),
        size=(12, 12),
        k=1,
        n_colours=1,
    ),
    Case("two_colours", "two.png", _save(_two_colours()), size=(12, 12), k=2, n_colours=2),
    Case(
        "png_16bit_rgb",
        "deep16.png",
        _png16_rgb,
        size=(6, 4),
        notes=("16-bit reduced to 8 bits by Pillow (high byte kept)",),
        pixels=_equal((DEEP >> 8).astype(np.uint8)),
    ),
    Case(
        "png_16bit_grey",
        "grey16.png",
        _save(GREY16),
        size=(4, 2),
        notes=("16-bit scaled to 8 bits (v * 255 / 65535, rounded)",),
        pixels=_equal(_grey(_rule16(GREY16))),
    ),
    Case(
        "tiff_16bit_rgb",
        "deep16.tif",
        _tiff(DEEP, photometric="rgb"),
        size=(6, 4),
        notes=("16-bit scaled to 8 bits (v * 255 / 65535, rounded)",),
        pixels=_equal(_rule16(DEEP)),
    ),
    Case(
        "float_tiff_nan_inf",
        "float.tif",
        _tiff(FLOAT),
        size=(3, 2),
        notes=("NaN/inf replaced (NaN and -inf -> 0, +inf -> 255)", "float values taken as [0, 1]"),
        pixels=_equal(_grey([[0, 128, 0], [255, 0, 255]])),
    ),
    Case(
        "greyscale",
        "grey.png",
        _save(np.arange(48, dtype=np.uint8).reshape(6, 8) * 5),
        size=(8, 6),
        pixels=_equal(_grey(np.arange(48).reshape(6, 8) * 5)),
    ),
    Case(
        "greyscale_alpha",
        "grey-alpha.png",
        _save(_la()),
        size=(3, 2),
        notes=("alpha composited on (255, 255, 255)",),
        pixels=_equal(_grey([[255, 177, 100]] * 2)),
    ),
    Case(
        "rgba_transparent",
        "rgba.png",
        _save(RGBA),
        size=(8, 6),
        k=2,
        n_colours=2,
        notes=("alpha composited on (255, 255, 255)",),
        pixels=_rgba_check,
    ),
    Case(
        "palette_png",
        "palette.png",
        _save(_palette()),
        size=(6, 4),
        n_colours=3,
        notes=("palette expanded",),
        pixels=_equal(_palette_pixels()),
    ),
    Case(
        "cmyk_jpeg",
        "cmyk.jpg",
        _save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), quality=95),
        size=(8, 8),
        notes=("CMYK converted to RGB (no colour management)",),
        pixels=_close((255, 0, 0), 8),
    ),
    Case(
        "animated_gif",
        "anim.gif",
        _gif,
        size=(8, 6),
        k=1,
        n_colours=1,
        notes=("first of 3 frames used",),
        pixels=_equal(np.broadcast_to((255, 0, 0), (6, 8, 3))),
    ),
    Case(
        "exif_rotation",
        "rotated.jpg",
        _exif_jpeg,
        size=(8, 16),
        notes=("EXIF orientation 6 applied",),
        pixels=_exif_check,
    ),
    Case(
        "decompression_bomb",
        "bomb.png",
        _bytes(crafted_png(100_000, 100_000)),
        error=f"image has 10000000000 pixels, above the limit of {LIMIT}",
    ),
    Case(
        "above_pixel_limit",
        "big.png",
        _save(pattern(80, 80)),
        error=f"image has 6400 pixels, above the limit of {LIMIT}",
    ),
    Case("name_spaces", "with space.png", _save(_SMALL), size=(8, 6), pixels=_equal(_SMALL)),
    Case("name_commas", "a,b,c.png", _save(_SMALL), size=(8, 6), pixels=_equal(_SMALL)),
    Case("name_brackets", "[x] (1) {2}.png", _save(_SMALL), size=(8, 6), pixels=_equal(_SMALL)),
    Case("name_unicode", "ünïcødé 画像.png", _save(_SMALL), size=(8, 6), pixels=_equal(_SMALL)),
    Case("name_leading_dash", "-leading-dash.png", _save(_SMALL), size=(8, 6)),
    # Two names that are the same text in Unicode (composed and decomposed "é"): two files
    # on Linux. Both are images, with different contents, and must stay apart.
    Case(
        "same_name_nfc", NFC_NAME, _save(pattern(6, 8)), size=(8, 6), pixels=_equal(pattern(6, 8))
    ),
    Case(
        "same_name_nfd", NFD_NAME, _save(pattern(8, 6)), size=(6, 8), pixels=_equal(pattern(8, 6))
    ),
)

BAD = tuple(c for c in CASES if not c.ok)
GOOD = tuple(c for c in CASES if c.ok)


def case_params(cases=CASES):
    """``pytest.mark.parametrize`` arguments: the cases with their ids."""
    import pytest

    return [pytest.param(case, id=case.id) for case in cases]
