"""Evidence for the elbow reading: how often each method recovers the true K.

    python benchmarks/bench_elbow.py [--seeds 4] [--features lab]

On synthetic scenes (``pipeline.synthetic.region_scene``: irregular regions of K
distinct colours, Gaussian noise sigma 4, JPEG quality 90) for K = 2..10, it sweeps
K = 1..12 once per image and reads the same WCSS curve three ways: plain Kneedle on
the raw curve, Kneedle on log WCSS, and kseg's log-slope reading with the default
strength threshold. It also reports the strength on structureless images (smooth
gradients, uniform noise) and on bundled photos, where "no clear elbow" is expected.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.elbow import choose_k, kneedle_knee
from pipeline.settings import SegmentSettings
from pipeline.sweep import sweep
from pipeline.synthetic import gradient_image, noise_image, region_scene


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--features", default="lab", choices=("lab", "rgb", "hsv"))
    a = p.parse_args()
    settings = SegmentSettings(features=a.features)
    hits = {"kneedle": 0, "kneedle-log": 0, "log-slope": 0, "log-slope (elbow)": 0}
    total = 0
    print(
        f"{'true K':>6} {'seed':>4} {'kneedle':>8} {'kn-log':>7} {'ours':>5} {'strength':>8} reason"
    )
    for k in range(2, 11):
        for seed in range(a.seeds):
            rgb, _ = region_scene(k, seed=100 * k + seed)
            result = sweep(rgb, settings)
            ks = np.array(result.k_values)
            w = np.array(result.wcss)
            everything = np.ones(ks.size, dtype=bool) & (ks >= settings.k_min)
            plain, _ = kneedle_knee(ks, w, everything)
            logk, _ = kneedle_knee(ks, np.log(w), everything)
            ours = choose_k(ks, w, settings)
            total += 1
            hits["kneedle"] += plain == k
            hits["kneedle-log"] += logk == k
            hits["log-slope"] += ours.k == k
            hits["log-slope (elbow)"] += ours.k == k and ours.reason == "elbow"
            print(
                f"{k:>6} {seed:>4} {plain!s:>8} {logk!s:>7} {ours.k:>5} {ours.strength:>8.2f} "
                f"{ours.reason}"
            )
    print()
    for name, n in hits.items():
        print(f"{name:<20} recovered the true K in {n}/{total} ({n / total:.0%})")
    print()
    print(f"{'structureless image':<22} {'strength':>8} reason")
    for seed in range(3):
        for name, image in (
            ("gradient", gradient_image(seed=seed)),
            ("noise", noise_image(seed=seed)),
        ):
            result = sweep(image, settings)
            choice = choose_k(result.k_values, result.wcss, settings)
            print(
                f"{name + f' seed {seed}':<22} {choice.strength:>8.2f} "
                f"{choice.reason} (K={choice.k})"
            )


if __name__ == "__main__":
    main()
