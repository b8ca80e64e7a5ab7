"""Segmentation quality against human segmentations (BSDS500): K-means alone and regions.

    python benchmarks/bench_quality.py BSDS_DIR --split val
    python benchmarks/bench_quality.py BSDS_DIR --split train --limit 40

BSDS_DIR holds ``images/<split>/*.jpg``, ``groundTruth/<split>/*.mat`` and ``score.py``
(``../shared/quality`` here; the data is read in place, never copied). Every image is
segmented once with the default settings; the K-means clusters at the chosen K are
scored beside the regions made with the defaults and with the main variants. The metrics
are ``score.py``'s own (imported from BSDS_DIR): Probabilistic Rand Index (PRI, higher
is better), Variation of Information (VI, lower is better) and Segmentation Covering
(higher is better), averaged as the BSDS500 benchmark does for one segmentation per
image. ``s/img`` is the engine's time per image for that row: the sweep, choice and
segmentation for K-means, plus the region stage (and, for ``finest``, the labelling
at the largest K) for the regions. Settings were tuned on train only
(``benchmarks/tune_regions.py``); report val.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from quality_common import Scores, image_ids, load_score  # noqa: E402

from pipeline.images import load_image  # noqa: E402
from pipeline.segment import image_regions, segment_image  # noqa: E402
from pipeline.settings import RegionSettings, SegmentSettings  # noqa: E402

#: The rows after K-means alone: a name and what it changes from the default regions.
VARIANTS: dict[str, dict] = {
    "regions (defaults)": {},
    "regions, threshold alone": {"fallback": "threshold"},
    "regions from finest K": {"source": "finest"},
    "regions, floor 0.3%": {"min_share": 0.003},
}


def _scores(score, labels: np.ndarray, gts: list[np.ndarray]) -> tuple[float, float, float, float]:
    tables = [score.contingency(labels, g) for g in gts]
    got, size = score.covering(labels, gts)
    pri = float(np.mean([score.rand_index(n) for n in tables]))
    vi = float(np.mean([score.variation_of_information(n) for n in tables]))
    return pri, vi, got, size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("bsds", type=Path, metavar="BSDS_DIR")
    p.add_argument("--split", choices=("train", "val"), default="val")
    p.add_argument("--limit", type=int, default=None, help="the first N images only")
    p.add_argument("--json", type=Path, help="also write the table's rows here")
    a = p.parse_args()
    score = load_score(a.bsds)
    ids = image_ids(a.bsds, a.split)[: a.limit]
    if not ids:
        raise SystemExit(f"no ground truth in {a.bsds / 'groundTruth' / a.split}")
    settings = SegmentSettings()
    variants = {name: RegionSettings(**change).validate() for name, change in VARIANTS.items()}
    totals = {name: Scores.empty() for name in ["K-means alone", *variants]}
    seconds = dict.fromkeys(totals, 0.0)
    counts: dict[str, list[int]] = {name: [] for name in totals}
    started = time.perf_counter()
    for i, image_id in enumerate(ids, 1):
        rgb = load_image(a.bsds / "images" / a.split / f"{image_id}.jpg").rgb
        gts = score.load_gt(a.bsds / "groundTruth" / a.split / f"{image_id}.mat")
        t = time.perf_counter()
        result = segment_image(rgb, settings)
        kmeans_s = time.perf_counter() - t
        seconds["K-means alone"] += kmeans_s
        labels = result.segmentation.labels
        totals["K-means alone"].add(*_scores(score, labels, gts))
        counts["K-means alone"].append(result.segmentation.k)
        for name, region_settings in variants.items():
            t = time.perf_counter()
            regions = image_regions(rgb, result, settings, region_settings)
            seconds[name] += kmeans_s + time.perf_counter() - t
            totals[name].add(*_scores(score, regions.labels, gts))
            counts[name].append(regions.n_regions)
        if i % 20 == 0:
            print(f"{i}/{len(ids)} {time.perf_counter() - started:.0f} s", file=sys.stderr)
    rows = []
    print(f"\n{a.split} ({len(ids)} images), settings fixed from train")
    print(f"{'segmentation':<28}{'PRI':>7}{'VI':>7}{'Cov':>7}{'regions':>9}{'s/img':>8}")
    for name, total in totals.items():
        pri, vi, cov = total.summary()
        median = int(np.median(counts[name]))
        per_image = seconds[name] / len(ids)
        print(f"{name:<28}{pri:>7.3f}{vi:>7.3f}{cov:>7.3f}{median:>9}{per_image:>8.3f}")
        changed = VARIANTS.get(name)
        rows.append(
            {
                "segmentation": name, "pri": pri, "vi": vi, "covering": cov,
                "regions_median": median, "seconds_per_image": per_image,
                "settings": None if changed is None
                else dataclasses.asdict(RegionSettings(**changed)),
            }
        )  # fmt: skip
    if a.json:
        report = {"split": a.split, "images": len(ids), "rows": rows}
        a.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
