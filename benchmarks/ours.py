"""kseg's engine on one image, decoding excluded from the timing (run as a script).

    python benchmarks/ours.py IMAGE [--k 5] [--features rgb]

Prints one JSON line: seconds of sweep + choice + segmentation, WCSS per K, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import numpy as np  # noqa: E402
from common import peak_rss_mb  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.segment import segment_image  # noqa: E402
from pipeline.settings import SegmentSettings  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("image")
    p.add_argument("--k", type=int, default=None, help="fit this K only (k_min = k_max = K)")
    p.add_argument("--features", default="rgb")
    a = p.parse_args()
    with Image.open(a.image) as im:
        rgb = np.asarray(im.convert("RGB"))
    if a.k is None:
        settings = SegmentSettings(features=a.features)
    else:
        settings = SegmentSettings(
            features=a.features, k_min=a.k, k_max=max(a.k, 2), k_override=a.k
        )
    # Import what the engine imports lazily before timing, as the reference script
    # has scikit-learn imported before its timer starts.
    import scipy.ndimage  # noqa: F401
    import skimage.color
    import skimage.measure  # noqa: F401
    import sklearn.cluster
    import sklearn.metrics  # noqa: F401
    import threadpoolctl  # noqa: F401
    from skimage.color import rgb2lab  # noqa: F401  (resolves the lazily loaded submodule)

    t = time.perf_counter()
    result = segment_image(rgb, settings)
    seconds = time.perf_counter() - t
    out = {
        "seconds": seconds,
        "stages": result.seconds,
        "k": result.segmentation.k,
        "reason": result.choice.reason,
        "k_values": result.sweep.k_values,
        "wcss": result.sweep.wcss,
        "n_colours": result.sweep.n_colours,
        "peak_mb": peak_rss_mb(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
