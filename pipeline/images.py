"""Read image files into ``(H, W, 3)`` uint8 RGB arrays, or refuse them with :class:`ImageError`.

Decoding either succeeds or raises :class:`~pipeline.errors.ImageError`; nothing else
escapes. The file's content decides its format (the extension list is for scanners);
only BMP, GIF, JPEG (and MPO), PNG, TIFF and WebP are decoded, so Pillow's riskier
plugins (EPS runs Ghostscript) are never reached.

Conversion rules
----------------
* Orientation: the EXIF orientation tag (1-8) is applied, as ``PIL.ImageOps.exif_transpose``
  would, so ``width``/``height`` are those of the upright image.
* Integer samples are scaled by their nominal range, never stretched:
  ``round(v * 255 / white)`` with ``white = 2**bits - 1`` (65535 for 16-bit,
  so 65535 -> 255, 32768 -> 128); negative values clip to 0.
  Exception: Pillow reads 16-bit RGB(A) PNG (and TIFFs tifffile cannot decompress
  without imagecodecs, e.g. LZW) itself and keeps the high byte (``v // 256``), at most
  one level away from the rule; a note says so.
* Float samples: NaN -> 0, -inf -> 0, +inf -> the top of the range. If the largest finite
  value is <= 1 the range is [0, 1] (multiplied by 255), otherwise [0, 255]; values
  outside the range are clipped, then rounded. Alpha is ranged separately from colour.
* Alpha (LA, RGBA, PA, palette or colour-key transparency) is blended over ``background``:
  ``round((c * a + b * (255 - a)) / 255)``; fully transparent pixels are exactly ``background``.
* Palette, CMYK (no colour management) and other modes are converted by Pillow.
* Only the first frame of animated GIF / multi-page TIFF is used.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import warnings
import zlib
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from .errors import ImageError, SettingsError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MAX_JPEG_SEGMENTS",
    "SUPPORTED_EXTENSIONS",
    "LoadedImage",
    "decode_image",
    "load_image",
    "to_rgb8",
]

#: Largest image (width * height) accepted by default.
DEFAULT_MAX_PIXELS = 100_000_000
#: Extensions a directory scanner should pick up (lower case, with the dot).
SUPPORTED_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif"}
)

_PILLOW_FORMATS = ("BMP", "GIF", "JPEG", "PNG", "TIFF", "WEBP")  # JPEG covers MPO
_TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
# What Pillow's and tifffile's decoders raise on bad data (UnidentifiedImageError is an OSError).
_DECODER_ERRORS = (
    OSError, ValueError, SyntaxError, struct.error, EOFError, IndexError, KeyError,
    TypeError, ZeroDivisionError, OverflowError, MemoryError, RuntimeError, zlib.error,
    Image.DecompressionBombError,
)  # fmt: skip
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """A decoded image and what was done to it.

    Attributes
    ----------
    rgb : ndarray, shape (H, W, 3), dtype uint8
        Upright RGB pixels; C-contiguous and read-only.
    path : str
        The file (or the ``name`` given to :func:`decode_image`).
    format : str
        Pillow's format name, e.g. ``"JPEG"``, ``"PNG"``, ``"TIFF"``.
    mode : str
        The source's Pillow mode (``"RGB"``, ``"I;16"``, ``"P"`` ...). TIFFs that Pillow
        cannot hold (16-bit or float with 2-4 samples) report ``"RGB;16"``, ``"RGBA;32F"`` ...
    width, height : int
        Size after orientation (``rgb.shape[1]``, ``rgb.shape[0]``).
    orientation : int
        The EXIF orientation applied (1 if none).
    bit_depth : int
        Bits per channel of the source.
    n_frames : int
        Frames (pages) in the file; only the first is used.
    notes : tuple of str
        The conversions done, in words.
    """

    rgb: np.ndarray
    path: str
    format: str
    mode: str
    width: int
    height: int
    orientation: int
    bit_depth: int
    n_frames: int
    notes: tuple[str, ...]

    def metadata(self) -> dict[str, Any]:
        """Every field but ``rgb``, as a JSON-able dict (``notes`` as a list)."""
        meta = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "rgb"}
        meta["notes"] = list(self.notes)
        return meta


def _scale(a: np.ndarray, white: int | None, notes: list[str]) -> np.ndarray:
    """Samples of any dtype to uint8 by the module rules (``white`` for integers)."""
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(a.dtype, np.floating):
        finite = np.isfinite(a)
        if not finite.all():
            notes.append("NaN/inf replaced (NaN and -inf -> 0, +inf -> 255)")
        top = 1.0 if not finite.any() or a[finite].max() <= 1.0 else 255.0
        notes.append(f"float values taken as [0, {top:g}]")
        a = np.nan_to_num(a, nan=0.0, posinf=top, neginf=0.0)
        if a.min() < 0 or a.max() > top:
            notes.append(f"float values outside [0, {top:g}] clipped")
        return np.rint(np.clip(a, 0, top) * (255.0 / top)).astype(np.uint8)
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"unsupported sample dtype {a.dtype}")
    white = int(np.iinfo(a.dtype).max if white is None else white)
    if a.dtype == np.uint8 and white == 255:
        return a
    if a.size and (a.min() < 0 or a.max() > white):
        notes.append(f"values outside [0, {white}] clipped")
    wide = np.clip(a, 0, white).astype(np.uint32 if white < 2**24 else np.uint64)
    notes.append(f"{white.bit_length()}-bit scaled to 8 bits (v * 255 / {white}, rounded)")
    return ((wide * 255 + white // 2) // white).astype(np.uint8)


def _to_rgb8(
    array: np.ndarray, background: tuple[int, int, int], white: int | None, notes: list[str]
) -> np.ndarray:
    a = np.asarray(array)
    a = a[..., None] if a.ndim == 2 else a
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"expected shape (H, W) or (H, W, 1-4), got {np.shape(array)}")
    has_alpha = a.shape[2] in (2, 4)
    colour = _scale(a[..., : a.shape[2] - has_alpha], white, notes)
    if colour.shape[2] == 1:
        colour = np.repeat(colour, 3, axis=2)
    if has_alpha:
        alpha = _scale(a[..., -1:], white, []).astype(np.uint16)
        bg = np.asarray(background, dtype=np.uint16)
        colour = ((colour * alpha + bg * (255 - alpha) + 127) // 255).astype(np.uint8)
        notes.append(f"alpha composited on {tuple(background)}")
    return np.ascontiguousarray(colour)


def to_rgb8(
    array: np.ndarray,
    *,
    background: tuple[int, int, int] = (255, 255, 255),
    white: int | None = None,
) -> np.ndarray:
    """Convert a grey/grey+alpha/RGB/RGBA array of any numeric dtype to uint8 RGB.

    Parameters
    ----------
    array : ndarray, shape (H, W), (H, W, 1), (H, W, 2), (H, W, 3) or (H, W, 4)
        Samples; a 2nd or 4th channel is alpha.
    background : tuple of 3 int
        Colour that alpha is blended over.
    white : int, optional
        Integer sample value that maps to 255 (default: the dtype's maximum).

    Returns
    -------
    ndarray, shape (H, W, 3), dtype uint8
        A new C-contiguous array, converted by the rules in the module docstring.

    Raises
    ------
    ValueError
        If the shape or dtype is not one of the above.
    """
    rgb = _to_rgb8(array, _check_background(background), white, [])
    return rgb.copy() if np.shares_memory(rgb, array) else rgb


def _check_background(background: tuple[int, int, int]) -> tuple[int, int, int]:
    bg = tuple(background)
    if len(bg) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in bg):
        raise SettingsError("background", f"must be three integers 0-255, got {background!r}")
    return bg  # type: ignore[return-value]


def _check_size(name: str, size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(name, f"image has zero width or height ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(name, _too_big(width * height, max_pixels))


def _too_big(pixels: int, max_pixels: int) -> str:
    limit = f"above the limit of {max_pixels} (set max_pixels to raise it)"
    return f"image has {pixels} pixels, {limit}"


def _bomb_reason(exc: Exception, max_pixels: int) -> str:
    # Pillow itself refuses > 2 * Image.MAX_IMAGE_PIXELS inside Image.open, before we see
    # the size. We leave that global alone, so a max_pixels above it cannot be honoured.
    found = re.search(r"\((\d+) pixels\)", str(exc))
    if found and int(found.group(1)) > max_pixels:
        return _too_big(int(found.group(1)), max_pixels)
    return f"image too large for Pillow ({exc}); raise PIL.Image.MAX_IMAGE_PIXELS as well"


def _read_wide_tiff(data: bytes, name: str, max_pixels: int) -> tuple | None:
    """Decode with tifffile the TIFFs Pillow truncates (16-bit RGB) or refuses (float RGB).

    Returns None for every other TIFF, and for headers tifffile cannot parse: Pillow reads
    (or refuses) those. tifffile and its codecs raise many exception types (zlib.error ...),
    hence the broad ``except Exception`` around its calls.
    """
    try:
        tif = tifffile.TiffFile(io.BytesIO(data))
        page = tif.pages.first
    except Exception:
        return None
    with tif:
        try:
            spp, bits, fmt = page.samplesperpixel, page.bitspersample, int(page.sampleformat)
            wanted = (int(page.photometric), spp) in {(1, 2), (2, 3), (2, 4)}
            size, extra = (page.imagewidth, page.imagelength), list(map(int, page.extrasamples))
            orientation = int(page.tags.valueof(274, 1) or 1)
            n_frames = len(tif.pages)
        except Exception:
            return None
        if not (wanted and page.axes in ("YXS", "SYX") and isinstance(bits, int)):
            return None
        if bits <= 8 and fmt != 3:
            return None
        _check_size(name, size, max_pixels)
        try:
            array = page.asarray()
        except MemoryError:
            raise
        except Exception as exc:  # e.g. LZW needs imagecodecs: Pillow can read 16-bit RGB
            if fmt == 3:
                raise OSError(str(exc) or type(exc).__name__) from exc
            return None
        array = np.moveaxis(array, 0, -1) if page.axes == "SYX" else array
        if array.ndim != 3 or array.shape[2] != spp:
            raise OSError(f"unexpected TIFF layout {array.shape}")
        if extra and extra[0] == 0:  # an extra sample that is not alpha: drop it
            array = array[..., :-1]
        white = None if fmt == 3 else 2 ** (bits - (fmt == 2)) - 1
        mode = ("", "L", "LA", "RGB", "RGBA")[array.shape[2]] + f";{bits}{'F' * (fmt == 3)}"
        return array, white, mode, bits, orientation, n_frames


def _read_pillow(data: bytes, name: str, max_pixels: int, notes: list[str]) -> tuple:
    with Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS) as src:
        _check_size(name, src.size, max_pixels)
        args = src.tile[0].args if src.tile else None  # before load(), which empties it
        rawmode = args if isinstance(args, str) else args[0] if isinstance(args, tuple) else ""
        src.load()
        fmt, mode, im, white = src.format or "?", src.mode, src, 255
        bits = {"1": 1, "I": 32, "F": 32}.get(mode, 16 if mode.startswith("I;16") else 8)
        if ";16" in str(rawmode) and not mode.startswith("I"):
            bits = 16
            notes.append("16-bit reduced to 8 bits by Pillow (high byte kept)")
        if fmt == "TIFF":
            bits = int(np.max(src.tag_v2.get(258, bits)))
        if mode.startswith("I"):
            unsigned = fmt == "TIFF" and np.atleast_1d(src.tag_v2.get(339, 1))[0] == 1
            white = 2 ** (bits - (mode == "I" and not unsigned)) - 1
        elif mode not in ("F", "L", "LA", "RGB", "RGBA") or "transparency" in src.info:
            if mode in ("P", "PA"):
                notes.append("palette expanded")
            elif mode == "CMYK":
                notes.append("CMYK converted to RGB (no colour management)")
            alpha = "A" in mode or "a" in mode or "transparency" in src.info
            try:
                im = src.convert("RGBA" if alpha else "RGB")
            except ValueError as exc:
                raise ImageError(name, f"unsupported image mode {mode} ({exc})") from exc
        array = np.asarray(im)
        try:
            orientation = src.getexif().get(0x0112, 1)
        except _DECODER_ERRORS:
            orientation = 1
            notes.append("EXIF unreadable, orientation not applied")
        try:
            n_frames = int(getattr(src, "n_frames", 1))
        except _DECODER_ERRORS:
            n_frames = 1
            notes.append("frame count unknown (a later frame is unreadable)")
        return array, white, mode, bits, orientation, n_frames, fmt


#: Most JPEG segments read before the image data (real files have a few dozen; Pillow
#: takes 0.45 s for 256 segments of 64 KB, and its cost grows quadratically).
MAX_JPEG_SEGMENTS = 256


def _check_jpeg_header(data: bytes, name: str) -> None:
    """Refuse a JPEG whose header holds more segments than any real file.

    Pillow reads every marker segment before the image data, with a cost that grows
    faster than the number of segments (2,000 EXIF segments of 64 KB took 105 s). The
    segments are counted first: walking their length fields costs microseconds.
    """
    position, count, size = 2, 0, len(data)
    while position + 4 <= size:
        if data[position] != 0xFF:
            return  # not a marker: leave the verdict to the decoder
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xDA or 0xD0 <= marker <= 0xD9 or marker == 0x01:
            return  # start of scan (image data follows), or a marker without length
        count += 1
        if count > MAX_JPEG_SEGMENTS:
            raise ImageError(
                name,
                f"JPEG header has more than {MAX_JPEG_SEGMENTS} segments before the image "
                "data (a damaged or hostile file)",
            )
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")


def decode_image(
    data: bytes,
    *,
    name: str = "<bytes>",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
) -> LoadedImage:
    """Decode an image held in memory; see :func:`load_image`.

    Parameters
    ----------
    data : bytes
        The whole file's content.
    name : str
        Used as ``LoadedImage.path`` and in error messages.
    max_pixels, background
        As for :func:`load_image`.

    Returns
    -------
    LoadedImage

    Raises
    ------
    ImageError
        If the bytes are empty, not a supported image, corrupt or truncated, or the image
        has zero size or more than ``max_pixels`` pixels (checked before pixel data is read).
    SettingsError
        If ``max_pixels`` or ``background`` is invalid.
    """
    background = _check_background(background)
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise SettingsError("max_pixels", f"must be a positive integer, got {max_pixels!r}")
    if len(data) == 0:
        raise ImageError(name, "file is empty (0 bytes)")
    if data[:2] == b"\xff\xd8":
        _check_jpeg_header(data, name)
    notes: list[str] = []
    # Decoder warnings become notes rather than escaping (or raising under -W error). Pillow's
    # DecompressionBombWarning is dropped: max_pixels is the limit (checked before load()).
    # catch_warnings() swaps the process-wide filters, so it is not thread-safe; at worst a
    # concurrent thread loses or keeps a filter while an image decodes.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            wide = _read_wide_tiff(data, name, max_pixels) if data[:4] in _TIFF_MAGIC else None
            if wide is not None:
                array, white, mode, bits, orientation, n_frames = wide
                fmt = "TIFF"
            else:
                array, white, mode, bits, orientation, n_frames, fmt = _read_pillow(
                    data, name, max_pixels, notes
                )
            rgb = _to_rgb8(array, background, white, notes)
        except ImageError:
            raise
        except UnidentifiedImageError as exc:
            raise ImageError(name, "not a recognised image format") from exc
        except Image.DecompressionBombError as exc:
            raise ImageError(name, _bomb_reason(exc, max_pixels)) from exc
        except MemoryError as exc:
            raise ImageError(name, "not enough memory to decode the image") from exc
        except _DECODER_ERRORS as exc:
            detail = str(exc)[:120] or type(exc).__name__
            raise ImageError(name, f"truncated or corrupt image data ({detail})") from exc
    for w in caught:
        if not issubclass(w.category, Image.DecompressionBombWarning):
            notes.append(f"decoder warning: {str(w.message)[:120]}")
    if isinstance(orientation, int) and orientation in _ORIENT:
        orientation = int(orientation)
        rgb = _ORIENT[orientation](rgb)
        notes.append(f"EXIF orientation {orientation} applied")
    else:
        orientation = 1
    if n_frames > 1:
        notes.append(f"first of {n_frames} frames used")
    # A fresh, owned, C-ordered copy when needed: never a view of a decoder buffer.
    rgb = np.require(rgb, np.uint8, ["C_CONTIGUOUS", "OWNDATA"])
    rgb.setflags(write=False)
    return LoadedImage(
        rgb=rgb, path=name, format=fmt, mode=mode, width=rgb.shape[1], height=rgb.shape[0],
        orientation=orientation, bit_depth=int(bits), n_frames=n_frames,
        notes=tuple(dict.fromkeys(notes)),
    )  # fmt: skip


def load_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
) -> LoadedImage:
    """Read an image file as upright 8-bit RGB (the file is read once, never modified).

    Parameters
    ----------
    path : str or os.PathLike
        The file. Its content, not its extension, decides the format.
    max_pixels : int
        Refuse images with more pixels (width * height) than this.
    background : tuple of 3 int
        Colour that transparent pixels are blended over.

    Returns
    -------
    LoadedImage
        ``rgb`` of shape (H, W, 3), dtype uint8, read-only, plus what was converted.

    Raises
    ------
    ImageError
        If the path is missing, a directory, unreadable, or not a decodable image
        (see :func:`decode_image`); the reason is short and specific.
    SettingsError
        If ``max_pixels`` or ``background`` is invalid.
    """
    name = os.fsdecode(os.fspath(path))
    try:
        mode = os.stat(name).st_mode
        if stat.S_ISDIR(mode):
            raise ImageError(name, "is a directory")
        if not stat.S_ISREG(mode):
            raise ImageError(name, "not a regular file")
        with open(name, "rb") as fh:
            data = fh.read()
    except FileNotFoundError as exc:
        raise ImageError(name, "no such file") from exc
    except NotADirectoryError as exc:
        raise ImageError(name, "no such file (a parent is not a directory)") from exc
    except IsADirectoryError as exc:
        raise ImageError(name, "is a directory") from exc
    except PermissionError as exc:
        raise ImageError(name, "permission denied") from exc
    except OSError as exc:
        raise ImageError(name, f"cannot read file ({exc.strerror or exc})") from exc
    return decode_image(data, name=name, max_pixels=max_pixels, background=background)
