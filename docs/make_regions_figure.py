"""Draw docs/regions-before-after.png: one photo, its K-means clusters and its regions.

    python docs/make_regions_figure.py [--photo coffee] [--out docs/regions-before-after.png]

Uses a scikit-image sample photo (not BSDS500) and the default settings: the left panel
is the photo, the middle one the boundaries of the K-means clusters at the chosen K (each
cluster scattered in many pieces), the right one the boundaries of the regions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import skimage.data
    from skimage.measure import label as connected

    from pipeline.render import boundaries_on
    from pipeline.segment import image_regions, segment_image
    from pipeline.settings import RegionSettings, SegmentSettings

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photo", default="coffee")
    p.add_argument("--out", type=Path, default=HERE / "regions-before-after.png")
    a = p.parse_args()
    rgb = np.ascontiguousarray(getattr(skimage.data, a.photo)()[..., :3])
    settings = SegmentSettings()
    result = segment_image(rgb, settings)
    regions = image_regions(rgb, result, settings, RegionSettings())
    clusters = result.segmentation.labels
    pieces = int(connected(clusters, background=-1, connectivity=1).max())
    panels = [
        (rgb, f"{a.photo} ({rgb.shape[1]}x{rgb.shape[0]})"),
        (
            boundaries_on(rgb, clusters),
            f"before: K-means, K={result.segmentation.k} ({pieces} connected pieces)",
        ),
        (boundaries_on(rgb, regions.labels), f"after: {regions.n_regions} regions"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.1), dpi=100)
    for ax, (image, title) in zip(axes, panels, strict=True):
        ax.imshow(image)
        ax.set_title(title, fontsize=11)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(a.out, metadata={"Software": None})
    print(f"wrote {a.out}: K={result.segmentation.k}, {pieces} pieces, {regions.n_regions} regions")


if __name__ == "__main__":
    main()
