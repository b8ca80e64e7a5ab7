"""The classic method, as the reference to beat (run as a script).

    python benchmarks/reference.py IMAGE OUT.png [--k 5]        # whole script
    python benchmarks/reference.py --fit IMAGE --k 5             # one fit, decoding excluded
    python benchmarks/reference.py --sweep IMAGE --k-max 12      # naive sweep K=1..k_max

Prints one JSON line with the seconds and WCSS (scikit-learn's ``inertia_``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.cluster import KMeans

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb


def _pixels(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("image")
    p.add_argument("out", nargs="?")
    p.add_argument("--fit", action="store_true")
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--k-max", type=int, default=12)
    a = p.parse_args()
    rgb = _pixels(a.image)
    pixels = rgb.reshape(-1, 3).astype(np.float64)
    out: dict = {}
    if a.sweep:
        wcss, secs = [], []
        for k in range(1, a.k_max + 1):
            t = time.perf_counter()
            wcss.append(float(KMeans(n_clusters=k, random_state=0, n_init=5).fit(pixels).inertia_))
            secs.append(time.perf_counter() - t)
        out = {"k_values": list(range(1, a.k_max + 1)), "wcss": wcss, "seconds": secs}
    else:
        t = time.perf_counter()
        km = KMeans(n_clusters=a.k, random_state=0, n_init=5).fit(pixels)
        out = {"seconds": time.perf_counter() - t, "wcss": float(km.inertia_)}
        if a.out:
            seg = km.cluster_centers_[km.labels_].reshape(rgb.shape).astype(np.uint8)
            Image.fromarray(seg).save(a.out)
    out["peak_mb"] = peak_rss_mb()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
