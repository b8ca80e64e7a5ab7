"""Speed and memory of the region stage (pipeline.regions), beside the K-means engine.

    python benchmarks/bench_regions.py               # everything (the reference fit: ~30 s)
    python benchmarks/bench_regions.py --no-memory   # skip the two peak-memory runs

Prints, with wall and CPU seconds (CPU time is the steadier one on a shared machine):
  photo   region stage on the bundled photos scaled to 0.15 megapixels (median of 5)
  linear  region stage on the 12-MP mosaic scaled to 0.75-12 MP: seconds per MP and
          the exponent of a log-log fit of seconds against pixels (1 = linear)
  mosaic  sweep-choose-segment (colour only, default settings) and the region stage on
          the 12-MP mosaic, in fresh processes (median of 3), and their ratio
  memory  peak RSS of the whole `kseg segment MOSAIC` (with and without regions) and of
          the reference's K=5 fit (benchmarks/reference.py), and the ratio
Targets (issue 13): photo <= 0.3 s, exponent ~1, region stage <= +50% of the
sweep-choose-segment time on the mosaic, peak memory <= 0.5x the reference's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import numpy as np  # noqa: E402
from common import PHOTOS, bundled_photo, decode, make_mosaic, peak_rss_mb, run_child  # noqa: E402

PHOTO_PIXELS = 150_000
SCALES_MP = (0.75, 1.5, 3.0, 6.0, 12.0)


def _resized(rgb: np.ndarray, pixels: float) -> np.ndarray:
    from PIL import Image

    height, width = rgb.shape[:2]
    scale = (pixels / (height * width)) ** 0.5
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))


def _warm() -> None:
    """Import what the stages import lazily, so no timing includes an import."""
    import scipy.ndimage
    import scipy.sparse.csgraph  # noqa: F401
    import skimage.measure  # noqa: F401
    from skimage.color import rgb2lab  # noqa: F401


def _timed_regions(rgb: np.ndarray, runs: int) -> tuple[float, float, int]:
    """Median wall and CPU seconds of the region stage, and the region count."""
    from pipeline.segment import image_regions, segment_image
    from pipeline.settings import RegionSettings, SegmentSettings

    settings, region_settings = SegmentSettings(), RegionSettings()
    result = segment_image(rgb, settings)
    walls, cpus = [], []
    for _ in range(runs):
        w, c = time.perf_counter(), time.process_time()
        regions = image_regions(rgb, result, settings, region_settings)
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus), regions.n_regions


def child(path: str) -> None:
    """One fresh-process measurement on an image: engine, then the region stage."""
    from pipeline.segment import image_regions, segment_image
    from pipeline.settings import RegionSettings, SegmentSettings

    rgb = decode(Path(path))
    _warm()
    settings = SegmentSettings()
    w, c = time.perf_counter(), time.process_time()
    result = segment_image(rgb, settings)
    engine = (time.perf_counter() - w, time.process_time() - c)
    w, c = time.perf_counter(), time.process_time()
    regions = image_regions(rgb, result, settings, RegionSettings())
    stage = (time.perf_counter() - w, time.process_time() - c)
    print(
        json.dumps(
            {
                "seconds": engine[0], "engine_wall": engine[0], "engine_cpu": engine[1],
                "regions_wall": stage[0], "regions_cpu": stage[1],
                "n_regions": regions.n_regions, "peak_mb": peak_rss_mb(),
            }
        )
    )  # fmt: skip


def kseg_peak(args: list[str]) -> None:
    """Run ``kseg`` in this process and print its peak memory (called as a child)."""
    from assets.cli import main as kseg

    code = kseg(args)
    print(json.dumps({"code": code, "peak_mb": peak_rss_mb()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    p.add_argument("--child", metavar="IMAGE", help=argparse.SUPPRESS)
    p.add_argument("--kseg", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(a.child)
    if a.kseg:
        return kseg_peak(a.kseg)
    _warm()
    print(f"{'photo (0.15 MP)':<24}{'wall s':>8}{'cpu s':>8}{'regions':>9}")
    for name in PHOTOS:
        rgb = _resized(bundled_photo(name), PHOTO_PIXELS)
        wall, cpu, n = _timed_regions(rgb, runs=5)
        print(f"{name:<24}{wall:>8.3f}{cpu:>8.3f}{n:>9}", flush=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        mosaic = make_mosaic(tmp / "mosaic-12mp.jpg")
        full = decode(mosaic)
        print(f"\n{'mosaic scaled':<24}{'wall s':>8}{'cpu s':>8}{'cpu s/MP':>10}{'regions':>9}")
        sizes, cpus = [], []
        for mp in SCALES_MP:
            rgb = full if mp == SCALES_MP[-1] else _resized(full, mp * 1e6)
            wall, cpu, n = _timed_regions(rgb, runs=3)
            megapixels = rgb.shape[0] * rgb.shape[1] / 1e6
            sizes.append(megapixels)
            cpus.append(cpu)
            print(f"{megapixels:<24.2f}{wall:>8.3f}{cpu:>8.3f}{cpu / megapixels:>10.3f}{n:>9}")
        exponent = np.polyfit(np.log(sizes), np.log(cpus), 1)[0]
        print(f"log-log exponent of CPU seconds against pixels: {exponent:.2f}")
        del full
        runs = sorted(
            (run_child([str(Path(__file__)), "--child", str(mosaic)]) for _ in range(3)),
            key=lambda r: r["regions_cpu"] + r["engine_cpu"],
        )
        m = runs[1]
        print("\n12-MP mosaic, fresh processes (median of 3)")
        print(f"{'':<30}{'wall s':>8}{'cpu s':>8}")
        print(f"{'sweep-choose-segment':<30}{m['engine_wall']:>8.3f}{m['engine_cpu']:>8.3f}")
        print(f"{'region stage':<30}{m['regions_wall']:>8.3f}{m['regions_cpu']:>8.3f}")
        print(
            f"{'overhead':<30}{m['regions_wall'] / m['engine_wall']:>8.0%}"
            f"{m['regions_cpu'] / m['engine_cpu']:>8.0%}   ({m['n_regions']} regions)"
        )
        if a.no_memory:
            return None
        me = Path(__file__)
        out = tmp / "out"
        with_regions = run_child([str(me), "--kseg", "segment", str(mosaic), "--out", str(out),
                                  "--quiet"])  # fmt: skip
        without = run_child([str(me), "--kseg", "segment", str(mosaic), "--out", str(out),
                             "--quiet", "--no-regions"])  # fmt: skip
        reference = run_child([str(HERE / "reference.py"), str(mosaic), "--fit", "--k", "5"])
        print(f"\npeak memory (MB): kseg segment {with_regions['peak_mb']:.0f}, with --no-regions "
              f"{without['peak_mb']:.0f}, reference K=5 fit {reference['peak_mb']:.0f}: "
              f"{with_regions['peak_mb'] / reference['peak_mb']:.2f}x")  # fmt: skip
    return None


if __name__ == "__main__":
    main()
