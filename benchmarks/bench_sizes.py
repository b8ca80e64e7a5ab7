"""The pipeline at every size, beside the engine alone on the same files (issue 16).

    python benchmarks/bench_sizes.py                      # 12-MP mosaic, 1,000 thumbnails
    python benchmarks/bench_sizes.py --big                # also a 60-MP JPEG (~4 min more)
    python benchmarks/bench_sizes.py --thumbnails 200 --runs 1

Every figure is a whole command in a fresh process, as a user runs it, on a fresh
store and a fresh Dagster instance (stock SQLite) in a temporary folder:

  large       ``kseg segment FILE`` against ``kseg run`` over an incoming folder holding
              only FILE (first materialisation), then ``kseg run --all`` (every step a
              cache hit); median of ``--runs``; the ratio run / segment (target <= 1.5x).
              Then the feature table as the store holds it: bytes per pixel of the pixel
              table and of the colour table, and pixel_features' compute seconds.
  thumbnails  N images of 64x64 (crops of the bundled photos): the first ``kseg run``
              and ``kseg run --all`` (targets: 2 minutes and 15 s for 1,000).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import numpy as np  # noqa: E402
from common import MOSAIC_TILES, bundled_photo, make_mosaic  # noqa: E402

KSEG = Path(sys.executable).with_name("kseg")


def _kseg(args: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one ``kseg`` command (fails loudly, naming it)."""
    started = time.perf_counter()
    proc = subprocess.run([str(KSEG), *args], env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"kseg {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return seconds


def _fresh(work: Path, incoming: Path) -> dict[str, str]:
    """The environment of a fresh store and instance under ``work``."""
    home = work / "dagster_home"
    home.mkdir(parents=True)
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "KSEG_STORE_ROOT": str(work / "store"),
        "KSEG_INCOMING_DIR": str(incoming),
        "KSEG_AUTOMATION_STATUS": "stopped",
    }


def _feature_table(store: Path, pixels: int) -> dict[str, float]:
    """Bytes per pixel of the stored feature tables and the step's compute time."""
    (folder,) = (store / "images").iterdir()
    manifest = json.loads((folder / "pixel_features.manifest.json").read_text())
    sizes = {name: entry["bytes"] for name, entry in manifest["files"].items()}
    return {
        "pixel_table_bytes_per_pixel": sizes["pixel_features.parquet"] / pixels,
        "colour_table_bytes_per_pixel": sizes.get("pixel_colours.parquet", 0) / pixels,
        "feature_seconds": manifest["seconds"],
        "store_mb": sum(p.stat().st_size for p in store.rglob("*") if p.is_file()) / 1e6,
    }


def large(path: Path, runs: int, tmp: Path) -> dict:
    """kseg segment against kseg run (first and all-hits) on one big file."""
    from PIL import Image

    with Image.open(path) as im:
        pixels = im.width * im.height
    segment, first, hits, tables = [], [], [], {}
    for i in range(runs):
        work = tmp / f"{path.stem}-{i}"
        incoming = work / "incoming"
        incoming.mkdir(parents=True)
        os.link(path, incoming / path.name)
        env = _fresh(work, incoming)
        segment.append(_kseg(["segment", str(path), "--out", str(work / "out"), "--quiet"], env))
        first.append(_kseg(["run"], env))
        hits.append(_kseg(["run", "--all"], env))
        tables = _feature_table(work / "store", pixels)
    row = {
        "file": path.name,
        "megapixels": pixels / 1e6,
        "segment_s": statistics.median(segment),
        "run_s": statistics.median(first),
        "all_hits_s": statistics.median(hits),
        **tables,
    }
    row["ratio"] = row["run_s"] / row["segment_s"]
    return row


def _thumbnails(folder: Path, n: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    photos = [bundled_photo(name) for name in MOSAIC_TILES]
    for i in range(n):
        photo = photos[i % len(photos)]
        y = int(rng.integers(0, photo.shape[0] - 64))
        x = int(rng.integers(0, photo.shape[1] - 64))
        Image.fromarray(photo[y : y + 64, x : x + 64]).save(folder / f"t{i:05d}.png")


def thumbnails(n: int, tmp: Path) -> dict:
    """The first kseg run and an all-hits kseg run --all over n thumbnails."""
    work = tmp / "thumbnails"
    incoming = work / "incoming"
    _thumbnails(incoming, n)
    env = _fresh(work, incoming)
    first = _kseg(["run"], env)
    hits = _kseg(["run", "--all"], env)
    return {"images": n, "run_s": first, "all_hits_s": hits}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per large file (median)")
    parser.add_argument("--thumbnails", type=int, default=1000, help="0 to skip")
    parser.add_argument("--big", action="store_true", help="also a 60-megapixel JPEG")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    print(f"# bench_sizes on {os.cpu_count()} cores, load {load:.1f} at the start")
    with tempfile.TemporaryDirectory(prefix="kseg-sizes-") as name:
        tmp = Path(name)
        files = [make_mosaic(tmp / "mosaic-12mp.jpg")]
        if args.big:
            files.append(make_mosaic(tmp / "mosaic-60mp.jpg", width=9000, height=6666))
        print(
            "| file | MP | kseg segment | kseg run | ratio (<= 1.5) | run --all (hits) "
            "| pixel table B/px | colour table B/px | pixel_features s | store MB |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for path in files:
            r = large(path, args.runs, tmp)
            print(
                f"| {r['file']} | {r['megapixels']:.1f} | {r['segment_s']:.1f} s "
                f"| {r['run_s']:.1f} s | {r['ratio']:.2f}x | {r['all_hits_s']:.1f} s "
                f"| {r['pixel_table_bytes_per_pixel']:.2f} | "
                f"{r['colour_table_bytes_per_pixel']:.3f} | {r['feature_seconds']:.2f} "
                f"| {r['store_mb']:.0f} |"
            )
        if args.thumbnails:
            t = thumbnails(args.thumbnails, tmp)
            per = 1000 * t["run_s"] / t["images"]
            print(
                f"\nthumbnails 64x64: {t['images']} images, first kseg run {t['run_s']:.1f} s "
                f"({per:.0f} ms per image; target 120 s per 1,000), kseg run --all "
                f"{t['all_hits_s']:.1f} s (target 15 s per 1,000)"
            )
    print(f"# load {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
