"""Dagster cost of the kseg pipeline: cache-hit ratio and backfill overhead.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_dagster.py [--images 50] [--height 128]

What it measures, on ``--images`` distinct pictures made from scikit-image's bundled
data (crops and flips, resized to ``--height`` pixels), with a fresh Dagster instance
(the same ``dagster.yaml`` as ``kseg run``: SQLite storage) and a fresh store:

* **engine** -- the engine's own time: the sum, over every image and step, of the
  compute time recorded in the step manifests (decoding, features, the K sweep, the
  choice, segmentation, and encoding the outputs);
* **first** -- wall time of the first materialisation of every per-image asset, as a
  backfill runs it (``segment_images``, up to ``BATCH_SIZE`` partitions per run);
* **again** -- wall time of re-materialising every asset of the same, unchanged images
  (every step must be a cache hit and no stored file may change).

* **unchanged kseg run** -- wall time of ``kseg run`` on the unchanged folder: it plans
  (hashes every file, checks the stored outputs and the recorded data versions), finds
  nothing to do, and only refreshes the report.

It prints ``cache-hit ratio = again / first`` (target <= 10 %) and ``backfill overhead
= (first - engine) / first`` (target <= 25 %), and splits the time between kseg's own
step code and Dagster (recording runs and events in its SQLite instance).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PICTURES = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "colorwheel",
    "coins",
    "camera",
    "page",
)


def _pictures(count: int, height: int) -> list[np.ndarray]:
    from skimage import data, transform

    bases = []
    for name in PICTURES:
        image = getattr(data, name)()
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        bases.append(image[..., :3])
    out = []
    for i in range(count):
        base = bases[i % len(bases)]
        variant = i // len(bases)
        h, w = base.shape[:2]
        # Each variant crops a different window (and flips every other one), so every
        # image is distinct content with a realistic colour distribution.
        crop = 1.0 - 0.08 * (variant % 5)
        ch, cw = max(8, int(h * crop)), max(8, int(w * crop))
        y0, x0 = (h - ch) * (variant % 3) // 2, (w - cw) * ((variant + 1) % 3) // 2
        window = base[y0 : y0 + ch, x0 : x0 + cw]
        if variant % 2:
            window = window[:, ::-1]
        width = max(8, round(window.shape[1] * height / window.shape[0]))
        small = transform.resize(window, (height, width), anti_aliasing=True, preserve_range=True)
        out.append(np.clip(np.rint(small), 0, 255).astype(np.uint8))
    return out


def _warm_up() -> None:
    """Import everything and run the engine once, so neither timing pays start-up."""
    from pipeline.segment import segment_image
    from pipeline.settings import SegmentSettings

    rng = np.random.default_rng(0)
    segment_image(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8), SegmentSettings())
    import assets.definitions  # noqa: F401  (Dagster and the code location)


def _materialisations(instance, run_ids: list[str]) -> list:
    import dagster as dg

    events = []
    for run_id in run_ids:
        for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
            events.append(record.dagster_event.event_specific_data.materialization)
    return events


def _event_count(instance, run_ids: list[str]) -> int:
    return sum(len(instance.all_logs(run_id)) for run_id in run_ids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--height", type=int, default=128)
    args = parser.parse_args(argv)

    from PIL import Image

    print(f"preparing {args.images} images of height {args.height} ...", flush=True)
    pictures = _pictures(args.images, args.height)
    _warm_up()

    from assets.incoming import scan_incoming
    from assets.keys import BATCH_SIZE, IMAGE_ASSETS
    from assets.run import materialise, open_instance
    from assets.storage import KsegStorage
    from assets.store import Store

    with tempfile.TemporaryDirectory(prefix="kseg-bench-") as tmp:
        tmp_path = Path(tmp)
        incoming = tmp_path / "incoming"
        incoming.mkdir()
        for i, rgb in enumerate(pictures):
            Image.fromarray(rgb).save(incoming / f"img{i:03d}.png")
        storage = KsegStorage(incoming_dir=str(incoming), store_root=str(tmp_path / "store"))
        instance = open_instance(tmp_path / "dagster_home")
        try:
            keys = [image.key for image in scan_incoming(incoming).images]
            instance.add_dynamic_partitions("images", keys)

            started = time.perf_counter()
            first_runs, errors = materialise(instance, storage, keys)
            first = time.perf_counter() - started
            assert not errors, errors
            store = Store(tmp_path / "store")
            engine = sum(
                store.manifest(key, asset).seconds for key in keys for asset in IMAGE_ASSETS
            )
            mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "store").rglob("*")}

            started = time.perf_counter()
            again_runs, errors = materialise(instance, storage, keys)
            again = time.perf_counter() - started
            assert not errors, errors
            again_events = _materialisations(instance, again_runs)
            hits = [m.metadata["cache"].value for m in again_events]
            steps_again = sum(m.metadata["seconds"].value for m in again_events)
            steps_first = sum(
                m.metadata["seconds"].value for m in _materialisations(instance, first_runs)
            )
            assert len(hits) == len(keys) * len(IMAGE_ASSETS) and set(hits) == {"hit"}, hits
            unchanged = mtimes == {p: p.stat().st_mtime_ns for p in (tmp_path / "store").rglob("*")}
            assert unchanged, "a cache hit rewrote a stored file"
            events_first = _event_count(instance, first_runs)
            events_again = _event_count(instance, again_runs)

            from assets.run import run_command

            started = time.perf_counter()
            code = run_command(
                str(incoming),
                store_root=str(tmp_path / "store"),
                instance=instance,
                out=io.StringIO(),
                err=io.StringIO(),
            )
            unchanged_run = time.perf_counter() - started
            assert code == 0
        finally:
            instance.dispose()

    n = len(keys)
    dagster_first, dagster_again = first - steps_first, again - steps_again
    lines = [
        f"images                 {n} x ~{args.height} px, {BATCH_SIZE} partitions per run",
        f"runs                   first {len(first_runs)}, again {len(again_runs)}",
        f"engine (compute) time  {engine:8.2f} s  ({engine / n * 1000:.0f} ms per image)",
        f"first materialisation  {first:8.2f} s  ({first / n * 1000:.0f} ms per image)",
        f"re-materialisation     {again:8.2f} s  ({again / n * 1000:.0f} ms per image; "
        f"all {len(hits)} steps cache hits, no stored file rewritten)",
        f"kseg run, unchanged    {unchanged_run:8.2f} s  (plans, finds nothing to do, "
        "refreshes the report)",
        f"dagster events         first {events_first}, again {events_again} "
        f"({events_first / n:.1f} and {events_again / n:.1f} per image)",
        f"time in kseg's steps   first {steps_first:.2f} s (engine, storage, metadata, checks), "
        f"again {steps_again:.2f} s (cache lookups, checks, metadata)",
        f"time in Dagster        first {dagster_first:.2f} s, again {dagster_again:.2f} s "
        f"(~{dagster_again / events_again * 1000:.1f} ms per event)",
        f"cache-hit ratio        {again / first:8.1%}  (target <= 10%): "
        f"kseg {steps_again / first:.1%} + Dagster {dagster_again / first:.1%}",
        f"backfill overhead      {(first - engine) / first:8.1%}  (target <= 25%): "
        f"Dagster alone {dagster_first / first:.1%}",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
