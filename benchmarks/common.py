"""Shared helpers for the benchmarks: sample images and child-process measurement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
MOSAIC_TILES = (
    "astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
    "hubble_deep_field", "retina", "stereo_motorcycle", "colorwheel",
)  # fmt: skip


def bundled_photo(name: str) -> np.ndarray:
    """A scikit-image bundled photo as (H, W, 3) uint8."""
    import skimage.data

    image = getattr(skimage.data, name)()
    if isinstance(image, tuple):
        image = image[0]
    return np.ascontiguousarray(image[..., :3])


def make_mosaic(path: Path, *, width: int = 4000, height: int = 3000, seed: int = 0) -> Path:
    """Write a ~12-megapixel JPEG photo mosaic of the bundled photos (with mild noise)."""
    from PIL import Image

    if path.exists():
        return path
    rows, cols = 3, 4
    tw, th = width // cols, height // rows
    canvas = Image.new("RGB", (width, height))
    for i in range(rows * cols):
        tile = Image.fromarray(bundled_photo(MOSAIC_TILES[i % len(MOSAIC_TILES)]))
        canvas.paste(
            tile.resize((tw, th), Image.Resampling.BICUBIC), ((i % cols) * tw, (i // cols) * th)
        )
    rng = np.random.default_rng(seed)
    noisy = np.asarray(canvas).astype(np.int16) + rng.normal(0, 2, (height, width, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=92)
    return path


def decode(path: Path) -> np.ndarray:
    """Decode an image file with Pillow (as the reference script does)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def run_child(args: list[str], *, env: dict[str, str] | None = None) -> dict:
    """Run a benchmark script in a child process and return the JSON line it prints.

    Each measurement runs in its own process so its peak memory (the child reports
    ``peak_mb``) is that of the measured work alone.
    """
    proc = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=env or dict(os.environ),
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (VmHWM).

    ``ru_maxrss`` is not used: Linux carries it over from the parent across
    fork/exec, so a child started by a big parent would report the parent's peak.
    """
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")
