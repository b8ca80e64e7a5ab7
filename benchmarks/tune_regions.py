"""Tune the region stopping rule on BSDS500 *train*: cache every stopping point's scores.

    python benchmarks/tune_regions.py BSDS_DIR --split train --cache /tmp/kseg-tune
    python benchmarks/tune_regions.py BSDS_DIR --split train --cache /tmp/kseg-tune --limit 50

For every image it runs the K-means sweep once, builds the region hierarchy (folding
and every Ward merge) from the finest and from the chosen clustering at each size
floor given, and scores every stopping point from 1 to ``--max-regions`` regions
(PRI, VI, Covering sums; contingency tables summed over merged regions, so no pixel
is read twice). One ``.npz`` per image and variant goes into the cache folder, outside
the project; :func:`load_cache` reads them back for rule studies, and the table printed
at the end gives, per variant, the best fixed region count and the per-image oracle.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from quality_common import (  # noqa: E402
    Scores,
    contingencies,
    image_ids,
    load_score,
    merged_tables,
    score_tables,
)

from pipeline.images import load_image  # noqa: E402
from pipeline.regions import region_hierarchy  # noqa: E402
from pipeline.render import segment  # noqa: E402
from pipeline.segment import centres_for, segment_image  # noqa: E402
from pipeline.settings import RegionSettings, SegmentSettings  # noqa: E402


def cache_image(score, bsds: Path, split: str, image_id: str, shares, max_regions, cache: Path):
    image = load_image(bsds / "images" / split / f"{image_id}.jpg")
    rgb = image.rgb
    settings = SegmentSettings()
    result = segment_image(rgb, settings)
    gts = score.load_gt(bsds / "groundTruth" / split / f"{image_id}.mat")
    sources = {
        "finest": centres_for(result.sweep, max(result.sweep.k_values)),
        "chosen": centres_for(result.sweep, result.choice.k),
    }
    kmeans = score_tables(score, contingencies(result.segmentation.labels, gts))
    np.save(cache / f"{image_id}.kmeans.npy", np.array(kmeans))
    for source, centres in sources.items():
        clusters = segment(rgb, centres, settings, hist=result.hist).labels
        for share in shares:
            path = cache / f"{image_id}.{source}.{share:g}.npz"
            if path.exists():
                continue
            hierarchy = region_hierarchy(
                rgb, clusters, RegionSettings(min_share=share), hist=result.hist
            )
            curve = hierarchy.curve
            base = contingencies(hierarchy.folded_labels(), gts)
            top = min(curve.n_start, max_regions)
            scores = np.full((max_regions + 1, 4), np.nan)
            for n in range(1, top + 1):
                tables = merged_tables(base, hierarchy.groups(n), n)
                scores[n] = score_tables(score, tables)
            np.savez(
                path,
                costs=curve.costs,
                regions=curve.regions,
                n_start=curve.n_start,
                wcss_start=curve.wcss_start,
                total_ss=curve.total_ss,
                pixels=rgb.shape[0] * rgb.shape[1],
                scores=scores,
            )


def load_cache(cache: Path, ids: list[str], source: str, share: float) -> list[dict]:
    """The cached curves and per-count scores of one variant, in id order."""
    out = []
    for image_id in ids:
        with np.load(cache / f"{image_id}.{source}.{share:g}.npz") as data:
            out.append({k: data[k] for k in data.files} | {"id": image_id})
    return out


def aggregate(rows: list[dict], counts: list[int]) -> tuple[float, float, float]:
    """PRI, VI, Covering when image ``i`` keeps ``counts[i]`` regions."""
    total = Scores.empty()
    for row, n in zip(rows, counts, strict=True):
        total.add(*row["scores"][n])
    return total.summary()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("bsds", type=Path, metavar="BSDS_DIR")
    p.add_argument("--split", choices=("train", "val"), default="train")
    p.add_argument("--cache", type=Path, required=True, metavar="DIR")
    p.add_argument("--limit", type=int, default=None, help="first N images only")
    p.add_argument("--shares", type=float, nargs="+", default=[0.003])
    p.add_argument("--max-regions", type=int, default=80)
    a = p.parse_args()
    score = load_score(a.bsds)
    ids = image_ids(a.bsds, a.split)[: a.limit]
    a.cache.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    for i, image_id in enumerate(ids, 1):
        cache_image(score, a.bsds, a.split, image_id, a.shares, a.max_regions, a.cache)
        if i % 20 == 0:
            print(f"{i}/{len(ids)} {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    print(f"{'variant':<20}{'best fixed n':>13}{'PRI':>7}{'VI':>7}{'Cov':>7}   oracle (Cov)")
    for source in ("finest", "chosen"):
        for share in a.shares:
            rows = load_cache(a.cache, ids, source, share)
            best = max(
                range(1, a.max_regions + 1),
                key=lambda n: aggregate(rows, [min(n, int(r["n_start"])) for r in rows])[2],
            )
            fixed = aggregate(rows, [min(best, int(r["n_start"])) for r in rows])
            oracle = aggregate(rows, [int(np.nanargmax(r["scores"][:, 2] / r["scores"][:, 3]))
                                      for r in rows])  # fmt: skip
            print(
                f"{source + ' ' + format(share, 'g'):<20}{best:>13}{fixed[0]:>7.3f}"
                f"{fixed[1]:>7.3f}{fixed[2]:>7.3f}   {oracle[0]:.3f} {oracle[1]:.3f} "
                f"{oracle[2]:.3f}"
            )


if __name__ == "__main__":
    main()
