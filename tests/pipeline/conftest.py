"""Image-generating fixtures for the pipeline tests (real files, written with Pillow/numpy)."""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def make_png_bytes(
    width: int,
    height: int,
    *,
    colour_type: int = 2,
    bit_depth: int = 8,
    raw: bytes = b"",
    chunks: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """A hand-made PNG with any declared IHDR size, valid CRCs and ``raw`` (filtered) rows.

    ``chunks`` are extra ``(type, body)`` chunks written between IHDR and IDAT.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + b"".join(_png_chunk(kind, body) for kind, body in chunks)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


def make_rgb_pattern(height: int = 16, width: int = 24) -> np.ndarray:
    """A deterministic (H, W, 3) uint8 image whose pixels mostly differ from each other."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x * 11) % 256, (y * 17) % 256, (x * 5 + y * 3) % 256], axis=-1).astype(
        np.uint8
    )


@pytest.fixture
def rgb_pattern() -> Callable[..., np.ndarray]:
    """``rgb_pattern(height=16, width=24)`` -> deterministic (H, W, 3) uint8 array."""
    return make_rgb_pattern


@pytest.fixture
def craft_png() -> Callable[..., bytes]:
    """``craft_png(width, height, colour_type=2, bit_depth=8, raw=b"", chunks=())`` -> bytes."""
    return make_png_bytes


@pytest.fixture
def save_image(tmp_path: Path) -> Callable[..., Path]:
    """``save_image(image_or_array, name, **save_kwargs)`` -> path of a file saved by Pillow."""

    def save(image: Image.Image | np.ndarray, name: str, **kwargs: object) -> Path:
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        path = tmp_path / name
        image.save(path, **kwargs)
        return path

    return save


# --- photos and small synthetic scenes for the engine tests ----------------------------


@functools.cache
def _bundled_photo(name: str, max_side: int | None) -> np.ndarray:
    from skimage import data

    rgb = np.ascontiguousarray(getattr(data, name)()[..., :3])
    if max_side is not None and max(rgb.shape[:2]) > max_side:
        height, width = rgb.shape[:2]
        scale = max_side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
    rgb = np.array(rgb, dtype=np.uint8, copy=True)
    rgb.setflags(write=False)
    return rgb


def load_photo(name: str, max_side: int | None = 160) -> np.ndarray:
    """A scikit-image bundled photo (astronaut, coffee, chelsea, rocket) as read-only
    (H, W, 3) uint8, downscaled so its longer side is at most ``max_side`` (None: full size)."""
    return _bundled_photo(name, max_side)


def make_quadrants(
    colours: np.ndarray, *, shape: tuple[int, int] = (48, 64), noise: float = 0.0, seed: int = 0
) -> np.ndarray:
    """Four quadrants of ``colours`` (4, 3) uint8, plus seeded Gaussian noise (8-bit units)."""
    height, width = shape
    truth = np.zeros(shape, dtype=np.int64)
    truth[: height // 2, width // 2 :] = 1
    truth[height // 2 :, : width // 2] = 2
    truth[height // 2 :, width // 2 :] = 3
    img = np.asarray(colours, dtype=np.float64)[truth]
    if noise:
        img = img + np.random.default_rng(seed).normal(0.0, noise, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def photo() -> Callable[..., np.ndarray]:
    """``photo(name, max_side=160)`` -> read-only downscaled scikit-image photo."""
    return load_photo


@pytest.fixture(scope="session")
def quadrants() -> Callable[..., np.ndarray]:
    """``quadrants(colours, shape=(48, 64), noise=0.0, seed=0)`` -> four-colour image."""
    return make_quadrants
