"""Sample images from scikit-image's bundled data, for demos and tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["SAMPLES", "write_samples"]

#: Bundled photo name -> file name written (a mix of formats on purpose).
SAMPLES = {
    "astronaut": "astronaut.png",
    "coffee": "coffee.jpg",
    "chelsea": "chelsea.png",
    "rocket": "rocket.jpg",
}


def _photo(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    return np.ascontiguousarray(image[..., :3])


def write_samples(dest: str | os.PathLike, *, overwrite: bool = False) -> list[Path]:
    """Write the sample photos into ``dest`` (created if needed); return the paths.

    Existing files are left alone unless ``overwrite`` is true, so re-running a demo
    does not change the images' bytes (and their segmentations stay cached).
    """
    from PIL import Image

    from .io import atomic_write

    folder = Path(dest)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, filename in SAMPLES.items():
        path = folder / filename
        if overwrite or not path.exists():
            with atomic_write(path) as tmp:
                fmt = "JPEG" if filename.endswith(".jpg") else "PNG"
                Image.fromarray(_photo(name)).save(
                    tmp, format=fmt, **({"quality": 92} if fmt == "JPEG" else {})
                )
        written.append(path)
    return written
