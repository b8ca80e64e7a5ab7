"""``kseg segment``: the engine from the command line, no Dagster involved.

For each image it writes, into ``OUT/<image stem>/``: ``segmented.png``,
``labels.png``, ``overlay.jpg``, ``segments.parquet``, ``elbow.parquet``,
``elbow.png``, the regions (unless ``--no-regions``: ``regions.png``,
``regions_overlay.jpg``, ``regions.parquet``, ``region_merges.parquet``) and, last,
``summary.json``. Everything is computed before the first file is written, and every
file is written atomically, so a bad image leaves no file behind and an interrupted
run never leaves a half-written file under its final name.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .errors import KsegError

__all__ = ["add_segment_arguments", "region_settings_from", "segment_command"]


def _k_arg(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        k = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer, got {value!r}") from None
    return k


def add_segment_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``segment`` sub-command's options to ``parser``."""
    from .images import DEFAULT_MAX_PIXELS
    from .settings import SegmentSettings

    d = SegmentSettings()
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files to segment")
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="DIR",
        help="output folder (one sub-folder per image)",
    )
    parser.add_argument(
        "--k",
        type=_k_arg,
        default=None,
        metavar="auto|N",
        help="number of segments, or 'auto' to choose at the elbow (default)",
    )
    parser.add_argument(
        "--k-min", type=int, default=d.k_min, help="smallest K to consider (default: %(default)s)"
    )
    parser.add_argument(
        "--k-max", type=int, default=d.k_max, help="largest K to consider (default: %(default)s)"
    )
    parser.add_argument(
        "--features",
        default=d.features,
        choices=("rgb", "lab", "hsv"),
        help="colour space of the clustering features (default: lab)",
    )
    parser.add_argument(
        "--spatial-weight",
        type=float,
        default=d.spatial_weight,
        metavar="W",
        help="weight of pixel position features, 0 = colour only (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=d.seed, help="random seed, 0 to 2**32-1 (default: %(default)s)"
    )
    parser.add_argument(
        "--min-strength",
        type=float,
        default=d.min_strength,
        help="elbow strength below which there is 'no clear elbow' (default: %(default)s)",
    )
    parser.add_argument(
        "--fallback",
        default=d.fallback,
        choices=("variance", "knee"),
        help="rule used when there is no clear elbow (default: %(default)s)",
    )
    parser.add_argument(
        "--variance-target",
        type=float,
        default=d.variance_target,
        help="explained-variance share for the 'variance' fallback (default: %(default)s)",
    )
    _add_region_arguments(parser)
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="refuse images with more pixels than this (default: %(default)s)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print a JSON array (one object per image) instead of a table",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _add_region_arguments(parser: argparse.ArgumentParser) -> None:
    from .settings import REGION_SOURCES, STOP_FALLBACKS, RegionSettings

    d = RegionSettings()
    group = parser.add_argument_group(
        "regions", "connected regions merged from the clusters (see pipeline/regions.py)"
    )
    group.add_argument(
        "--no-regions",
        dest="regions_enabled",
        action="store_false",
        help="do not make regions (no regions.* files, no region count)",
    )
    group.add_argument(
        "--region-source",
        default=d.source,
        choices=REGION_SOURCES,
        help="clustering the regions start from: the chosen K or the sweep's largest "
        "(default: %(default)s)",
    )
    numbers = [
        # flag, type, setting, metavar, help
        ("--min-share", float, "min_share", "S", "size floor as a share of the image; "
         "smaller pieces are folded into the closest-coloured neighbour"),
        ("--max-cost", float, "max_cost", "C", "merge while a merge adds at most C to the "
         "mean squared Lab distance per pixel"),
        ("--stop-strength", float, "min_strength", "S",
         "stop strength below which there is 'no clear stop'"),
        ("--gap-span", float, "gap_span", "F",
         "the gap fallback looks within a factor 1+F of the threshold's count"),
        ("--min-regions", int, "min_regions", "N", "fewest regions the stopping rule may keep"),
        ("--max-regions", int, "max_regions", "N", "most regions the stopping rule may keep"),
    ]  # fmt: skip
    for flag, kind, name, metavar, text in numbers:
        group.add_argument(
            flag,
            type=kind,
            default=getattr(d, name),
            metavar=metavar,
            help=f"{text} (default: %(default)s)",
        )
    group.add_argument(
        "--stop-fallback",
        default=d.fallback,
        choices=STOP_FALLBACKS,
        help="rule used when there is no clear stop (default: %(default)s)",
    )
    group.add_argument(
        "--regions",
        dest="n_regions",
        type=_k_arg,
        default=None,
        metavar="auto|N",
        help="number of regions, or 'auto' for the stopping rule (default: auto)",
    )


def region_settings_from(args: argparse.Namespace) -> Any:
    """The :class:`RegionSettings` of parsed ``kseg segment`` arguments (validated).

    Raises
    ------
    SettingsError
        Naming the first invalid setting.
    """
    from .settings import RegionSettings

    return RegionSettings(
        enabled=args.regions_enabled, source=args.region_source, min_share=args.min_share,
        max_cost=args.max_cost, min_strength=args.stop_strength, fallback=args.stop_fallback,
        gap_span=args.gap_span, min_regions=args.min_regions, max_regions=args.max_regions,
        n_regions=args.n_regions,
    ).validate()  # fmt: skip


def _printable(text: str) -> str:
    """``text`` with undecodable bytes of a file name (lone surrogates) as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _out_dirs(paths: list[str], out: Path) -> list[Path]:
    """One output folder per image, named by stem; repeated stems get -2, -3, ...

    A stem that would leave ``out`` (``...png`` has the stem ``..``) or name it
    (``..png``: ``.``) becomes ``image``; undecodable bytes are spelt ``\\xNN``.
    """
    seen: dict[str, int] = {}
    dirs = []
    for p in paths:
        stem = _printable(Path(p).stem)
        stem = "image" if stem in ("", ".", "..") else stem
        seen[stem] = seen.get(stem, 0) + 1
        dirs.append(out / (stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"))
    return dirs


#: Modules the engine imports lazily, at first use (so that ``kseg --help`` is quick).
#: Not ``kneed``: only the non-default ``kneedle`` elbow method uses it, and it pulls in
#: matplotlib.pyplot and scipy.signal (0.45 s of every command's start-up).
_ENGINE_MODULES = (
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
    "pyarrow.parquet",
    "scipy.ndimage",
    "scipy.sparse.csgraph",
    "skimage.color",
    "skimage.measure",
    "sklearn.cluster",
    "sklearn.metrics",
    "threadpoolctl",
)


def _import_engine() -> None:
    """Import what the engine imports lazily, once, before the first image is timed."""
    import importlib

    from PIL import Image
    from skimage.color import rgb2lab  # scikit-image loads a submodule at first access
    from skimage.measure import label

    for name in _ENGINE_MODULES:
        importlib.import_module(name)
    Image.preinit()  # Pillow's common format plugins
    del rgb2lab, label
    import pandas as pd
    import pyarrow as pa

    pa.Table.from_pandas(pd.DataFrame({"x": [0]}))  # loads pyarrow's pandas support


def _unusable_out(out: Path) -> str | None:
    """Why ``out`` cannot take the outputs (None if it can): checked before computing."""
    import os

    if out.exists() and not out.is_dir():
        return "is not a folder"
    existing = out
    while not existing.exists():  # the nearest folder that exists must be writable
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot write to {existing} (permission denied)"
    return None


def _segment_one(
    path: str, out_dir: Path, settings: Any, region_settings: Any, max_pixels: int
) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor
    from dataclasses import replace

    import pyarrow.parquet as pq

    from .images import load_image
    from .io import atomic_write, atomic_write_bytes
    from .plots import elbow_plot_png
    from .regions import merges_to_arrow
    from .render import (
        boundaries_on,
        boundary_overlay,
        encode_jpeg,
        encode_png,
        encode_segmented_png,
        segment_table,
    )
    from .segment import image_regions, segment_image
    from .sweep import sweep_to_arrow

    started = time.perf_counter()
    image = load_image(path, max_pixels=max_pixels)
    result = segment_image(image.rgb, settings)
    seg = result.segmentation
    regions = (
        image_regions(image.rgb, result, settings, region_settings)
        if region_settings.enabled
        else None
    )
    # Before any output and before the PNG thread starts: its row-block sums then do not
    # overlap the encoders' copies of the image (the command's peak memory at 12 MP).
    # Regions made from the chosen clustering have already counted its pieces.
    pieces = None if regions is None or region_settings.source != "chosen" else regions
    segments = segment_table(
        image.rgb,
        seg.labels,
        hist=result.hist,
        n_components=None if pieces is None else pieces.cluster_pieces,
    )
    # Nothing below maps pixels to colours: let the pixel index go before the encoders
    # make their copies of the image (4 bytes per pixel off the peak).
    result = replace(result, hist=result.hist.without_index())
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {
        "segmented": out_dir / "segmented.png",
        "labels": out_dir / "labels.png",
        "overlay": out_dir / "overlay.jpg",
        "segments": out_dir / "segments.parquet",
        "elbow": out_dir / "elbow.parquet",
        "elbow_plot": out_dir / "elbow.png",
    }
    if regions is not None:
        outputs |= {
            "regions": out_dir / "regions.png",
            "regions_overlay": out_dir / "regions_overlay.jpg",
            "regions_table": out_dir / "regions.parquet",
            "region_merges": out_dir / "region_merges.parquet",
        }
    outputs["summary"] = out_dir / "summary.json"

    def write_png(name: str, make: Any) -> None:
        atomic_write_bytes(outputs[name], encode_png(make()))

    def write_jpeg(name: str, make: Any) -> None:
        atomic_write_bytes(outputs[name], encode_jpeg(make()))

    # Pillow releases the GIL while it compresses, so the pictures (most of the output
    # time at 12 MP) are encoded on two threads while this one writes the tables and the
    # plot: 5.6 -> 5.2 s for the whole command at 12 MP, 13.5 -> 12.9 s at 48 MP, the
    # same peak memory (it is reached earlier, while computing).
    with ThreadPoolExecutor(max_workers=2) as pool:
        pngs = [
            pool.submit(
                lambda: atomic_write_bytes(outputs["segmented"], encode_segmented_png(seg))
            ),
            pool.submit(write_png, "labels", lambda: seg.labels),
            pool.submit(write_jpeg, "overlay", lambda: boundary_overlay(image.rgb, seg.labels)),
        ]
        if regions is not None:
            pngs += [
                pool.submit(write_png, "regions", lambda: regions.labels),
                pool.submit(
                    write_jpeg, "regions_overlay", lambda: boundaries_on(image.rgb, regions.labels)
                ),
            ]
            with atomic_write(outputs["regions_table"]) as tmp:
                pq.write_table(_arrow(regions.table), tmp, compression="zstd")
            with atomic_write(outputs["region_merges"]) as tmp:
                pq.write_table(merges_to_arrow(regions), tmp, compression="zstd")
        with atomic_write(outputs["segments"]) as tmp:
            pq.write_table(_arrow(segments), tmp, compression="zstd")
        with atomic_write(outputs["elbow"]) as tmp:
            pq.write_table(sweep_to_arrow(result.sweep), tmp, compression="zstd")
        plot = elbow_plot_png(result.sweep.table, result.choice)
        atomic_write_bytes(outputs["elbow_plot"], plot)
        for done in pngs:
            done.result()
    stages = dict(result.seconds)
    if regions is not None:
        stages["regions"] = sum(regions.seconds.values())
    table = result.sweep.table
    at_k = (
        table.loc[table["k_effective"] == seg.k].iloc[0]
        if seg.k in set(table["k_effective"])
        else None
    )
    summary = {
        "image": path,
        "width": image.width,
        "height": image.height,
        "n_colours": result.sweep.n_colours,
        "features": settings.features,
        "k": seg.k,
        "reason": result.choice.reason,
        "method": result.choice.method,
        "rule": result.choice.rule,
        "knee_strength": round(result.choice.strength, 4),
        "detail": result.choice.detail,
        "k_values": result.sweep.k_values,
        "wcss": result.sweep.wcss,
        "explained_variance": None if at_k is None else float(at_k["explained_variance"]),
        "wcss_at_k": seg.wcss,
        "n_regions": None if regions is None else regions.n_regions,
        "regions": None if regions is None else _region_summary(regions),
        "image_notes": list(image.notes),
        "seconds": round(time.perf_counter() - started, 3),
        "stage_seconds": {k: round(v, 3) for k, v in stages.items()},
        "outputs": {k: str(v) for k, v in outputs.items()},
    }
    atomic_write_bytes(outputs["summary"], json.dumps(summary, indent=2).encode())
    return summary


def _region_summary(regions: Any) -> dict[str, Any]:
    choice = regions.choice
    return {
        "count": regions.n_regions,
        "rule": choice.rule,
        "reason": choice.reason,
        "strength": round(choice.strength, 4),
        "threshold_regions": choice.threshold_regions,
        "detail": choice.detail,
        "components": regions.n_components,
        "folded": regions.n_folded,
    }


def _arrow(frame: Any) -> Any:
    import pyarrow as pa

    return pa.Table.from_pandas(frame, preserve_index=False)


def _print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'image':<32} {'size':>11} {'colours':>8} {'K':>3} {'strength':>8}  "
        f"{'reason':<15} {'regions':>7} {'s':>6}"
    )
    for r in rows:
        size = f"{r['width']}x{r['height']}"
        name = _printable(r["image"])
        name = name if len(name) <= 32 else "…" + name[-31:]
        regions = "-" if r["n_regions"] is None else r["n_regions"]
        print(
            f"{name:<32} {size:>11} {r['n_colours']:>8} {r['k']:>3} "
            f"{r['knee_strength']:>8.2f}  {r['reason']:<15} {regions:>7} {r['seconds']:>6.2f}"
        )


def segment_command(args: argparse.Namespace) -> int:
    """Run ``kseg segment`` with parsed arguments; return the exit code.

    0 when every image was segmented, 1 when some failed (each failure is one line
    on stderr naming the file and the reason), 2 for invalid settings.
    """
    from .errors import SettingsError
    from .settings import SegmentSettings

    try:
        if args.max_pixels < 1:  # refused before any image, like every other setting
            raise SettingsError(
                "max_pixels", f"must be a positive integer, got {args.max_pixels!r}"
            )
        region_settings = region_settings_from(args)
        settings = SegmentSettings(
            k_min=args.k_min, k_max=args.k_max, features=args.features,
            spatial_weight=args.spatial_weight, seed=args.seed, k_override=args.k,
            min_strength=args.min_strength, fallback=args.fallback,
            variance_target=args.variance_target,
        ).validate()  # fmt: skip
    except KsegError as exc:
        print(f"kseg: error: {exc}", file=sys.stderr)
        return 2
    problem = _unusable_out(args.out)
    if problem:  # before any compute: nothing is lost by failing now
        print(f"kseg: error: --out {args.out}: {problem}", file=sys.stderr)
        return 2
    _import_engine()  # so that no image's seconds include the imports
    rows, failed = [], 0
    dirs = _out_dirs(args.images, args.out)
    for i, (path, out_dir) in enumerate(zip(args.images, dirs, strict=True), start=1):
        if not args.quiet and len(args.images) > 1:
            print(f"[{i}/{len(args.images)}] {path}", file=sys.stderr, flush=True)
        try:
            rows.append(_segment_one(path, out_dir, settings, region_settings, args.max_pixels))
        except KsegError as exc:
            failed += 1
            print(f"kseg: error: {exc}", file=sys.stderr, flush=True)
        except OSError as exc:  # e.g. the output folder is not writable
            failed += 1
            print(f"kseg: error: {path}: cannot write outputs ({exc})", file=sys.stderr)
        except Exception as exc:  # a bug: still one line naming the file, never a traceback
            failed += 1
            detail = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            print(f"kseg: error: {path}: unexpected error ({detail})", file=sys.stderr)
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif rows:
        _print_table(rows)
    if failed:
        print(f"kseg: {failed} of {len(args.images)} image(s) failed", file=sys.stderr)
    return 1 if failed else 0
