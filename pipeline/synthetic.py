"""Synthetic test scenes with a known number of colour regions.

Used by the tests and the benchmarks to check that the elbow reading recovers
the true K, and that smooth or noisy images report "no clear elbow".
"""

from __future__ import annotations

import io

import numpy as np

__all__ = ["gradient_image", "noise_image", "region_scene"]


def _distinct_colours(k: int, rng: np.random.Generator, min_distance: float) -> np.ndarray:
    """``k`` random sRGB colours at least ``min_distance`` apart in CIE Lab."""
    from skimage import color

    chosen: list[np.ndarray] = []
    labs: list[np.ndarray] = []
    for _ in range(20_000):
        c = rng.integers(0, 256, size=3).astype(np.uint8)
        lab = color.rgb2lab(c.reshape(1, 1, 3))[0, 0]
        if all(np.linalg.norm(lab - other) >= min_distance for other in labs):
            chosen.append(c)
            labs.append(lab)
            if len(chosen) == k:
                return np.array(chosen)
    raise ValueError(f"could not draw {k} colours {min_distance} apart")


def region_scene(
    k: int,
    *,
    seed: int = 0,
    shape: tuple[int, int] = (192, 256),
    noise: float = 4.0,
    jpeg_quality: int | None = 90,
    min_distance: float = 25.0,
    min_share: float = 0.03,
) -> tuple[np.ndarray, np.ndarray]:
    """An image of ``k`` irregular regions, each of one distinct colour.

    Regions are a Voronoi partition of jittered seeds whose boundaries are bent by a
    smooth random displacement field; each colour gets at least one region and
    regions of the same colour may touch.

    Parameters
    ----------
    k : int
        Number of distinct colours (the true K).
    seed : int
    shape : (int, int)
        ``(height, width)``.
    noise : float
        Standard deviation of the Gaussian noise added per channel, in 8-bit units.
    jpeg_quality : int or None
        Round-trip through JPEG at this quality (None: no compression).
    min_distance : float
        Minimum CIE Lab distance between region colours.
    min_share : float
        Every colour covers at least this share of the pixels (layouts are redrawn
        until it does), so each of the K colours is a real segment.

    Returns
    -------
    rgb : (H, W, 3) ndarray of uint8
    truth : (H, W) ndarray of int
        The colour index of each pixel before noise.
    """
    rng = np.random.default_rng(seed)
    height, width = shape
    for _ in range(200):
        truth = _layout(k, rng, shape)
        if np.bincount(truth.ravel(), minlength=k).min() >= min_share * height * width:
            break
    else:
        raise ValueError(f"could not lay out {k} regions each covering {min_share:.0%}")
    colours = _distinct_colours(k, rng, min_distance)
    img = colours[truth].astype(np.float64) + rng.normal(0, noise, (*shape, 3))
    rgb = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    if jpeg_quality is not None:
        rgb = _jpeg_round_trip(rgb, jpeg_quality)
    return rgb, truth


def _layout(k: int, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Colour index per pixel: warped Voronoi cells of jittered seeds, k colours."""
    from scipy import ndimage

    height, width = shape
    n_seeds = k + int(rng.integers(0, k + 1))
    seeds = rng.uniform([0, 0], [height, width], size=(n_seeds, 2))
    owner = np.concatenate([np.arange(k), rng.integers(0, k, n_seeds - k)])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    warp = [ndimage.gaussian_filter(rng.normal(0, 1, shape), sigma=min(shape) / 8) for _ in "yx"]
    amp = min(shape) / 4 / max(np.abs(w).max() for w in warp)
    yy += warp[0] * amp
    xx += warp[1] * amp
    d = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2
    return owner[np.argmin(d, axis=2)]


def gradient_image(*, seed: int = 0, shape: tuple[int, int] = (192, 256)) -> np.ndarray:
    """A smooth two-dimensional colour gradient (no natural segments)."""
    rng = np.random.default_rng(seed)
    height, width = shape
    y = np.linspace(0, 1, height)[:, None]
    x = np.linspace(0, 1, width)[None, :]
    a, b = rng.uniform(0, 255, size=(2, 3))
    img = np.stack([a[c] * x + b[c] * y for c in range(3)], axis=2)
    img = 255 * (img - img.min()) / (np.ptp(img) or 1)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def noise_image(*, seed: int = 0, shape: tuple[int, int] = (192, 256)) -> np.ndarray:
    """Uniform random colours (no structure at all)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)


def _jpeg_round_trip(rgb: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB")).copy()
