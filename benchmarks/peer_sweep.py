"""One peer tool's K sweep on one image, as its user would write it (run as a script).

    PEER_PYTHON benchmarks/peer_sweep.py TOOL IMAGE [--k-max 12] [--k 5] [--out OUT.png]

TOOL is one of ``faiss``, ``opencv``, ``yellowbrick``, ``minibatch``, ``sklearn``
(scikit-learn's classic ``KMeans(n_init=5)`` sweep) or ``sklearn-k`` (one classic fit
at ``--k``). It decodes the image with Pillow, clusters every pixel's RGB for
K = 1..k_max (yellowbrick: 2..k_max, it has no K=1), writes the segmented image at the
last K to ``--out`` if given, and prints one JSON line: the centres of every K, the
clustering seconds (``compute``, decoding and writing excluded) and, for yellowbrick,
its own distortion scores. It imports only the tool, numpy and Pillow, so it runs in
the peers' own environment (``bench_peers.py --make-env``), not kseg's.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from PIL import Image


def _faiss(pixels: np.ndarray, k: int) -> np.ndarray:
    import faiss

    km = faiss.Kmeans(3, k, niter=20, seed=1234)  # its defaults: 256 points per centre
    km.train(np.ascontiguousarray(pixels, dtype=np.float32))
    return km.centroids


def _opencv(pixels: np.ndarray, k: int) -> np.ndarray:
    import cv2

    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 100, 0.2)
    cv2.setRNGSeed(0)
    data = np.ascontiguousarray(pixels, dtype=np.float32)
    _, _, centres = cv2.kmeans(data, k, None, criteria, 3, cv2.KMEANS_PP_CENTERS)
    return centres


def _minibatch(pixels: np.ndarray, k: int) -> np.ndarray:
    from sklearn.cluster import MiniBatchKMeans

    return MiniBatchKMeans(n_clusters=k, random_state=0).fit(pixels).cluster_centers_


def _classic(pixels: np.ndarray, k: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, random_state=0, n_init=5).fit(pixels).cluster_centers_


TOOLS = {"faiss": _faiss, "opencv": _opencv, "minibatch": _minibatch, "sklearn": _classic}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("tool", choices=[*TOOLS, "yellowbrick", "sklearn-k"])
    parser.add_argument("image")
    parser.add_argument("--k-max", type=int, default=12)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--out")
    args = parser.parse_args()
    with Image.open(args.image) as image:
        rgb = np.asarray(image.convert("RGB"))
    pixels = rgb.reshape(-1, 3).astype(np.float64)
    centres: dict[int, list] = {}
    scores: dict[int, float] = {}
    started = time.perf_counter()
    if args.tool == "yellowbrick":
        import matplotlib

        matplotlib.use("Agg")
        from sklearn.cluster import KMeans
        from yellowbrick.cluster import KElbowVisualizer

        visualizer = KElbowVisualizer(KMeans(random_state=0), k=(2, args.k_max + 1))
        visualizer.fit(pixels)
        scores = {
            int(k): float(s)
            for k, s in zip(visualizer.k_values_, visualizer.k_scores_, strict=True)
        }
        last = KMeans(n_clusters=visualizer.elbow_value_ or args.k, random_state=0).fit(pixels)
        centres[int(last.n_clusters)] = last.cluster_centers_.tolist()
    elif args.tool == "sklearn-k":
        centres[args.k] = _classic(pixels, args.k).tolist()
    else:
        for k in range(1, args.k_max + 1):
            centres[k] = np.asarray(TOOLS[args.tool](pixels, k)).tolist()
    compute = time.perf_counter() - started
    if args.out:
        k = max(centres)
        table = np.asarray(centres[k])
        nearest = np.empty(len(pixels), dtype=np.int64)
        for start in range(0, len(pixels), 1 << 20):
            block = pixels[start : start + (1 << 20)]
            nearest[start : start + len(block)] = (
                ((block[:, None, :] - table[None]) ** 2).sum(-1).argmin(1)
            )
        painted = np.clip(np.rint(table[nearest]), 0, 255).astype(np.uint8)
        Image.fromarray(painted.reshape(rgb.shape)).save(args.out)
    print(json.dumps({"compute": compute, "centres": centres, "scores": scores}))


if __name__ == "__main__":
    main()
