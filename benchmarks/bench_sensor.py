"""Tick times of ``incoming_images_sensor`` on a folder of 10,000 small images.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_sensor.py [--files 10000] [--folders 100]

It writes ``--files`` distinct 8x8 PNGs into ``--folders`` subfolders of a temporary
incoming folder (their mtimes ``--age`` seconds old, default a minute, as in a folder
filled before the sensor starts; ``--age 0``: every file is still settling at the first
tick), opens a fresh Dagster instance like ``dagster dev``'s (SQLite), and evaluates
the real sensor definition through ``build_sensor_context`` the way the daemon does:
``evaluate_tick`` (run requests resolved against the partitions), then the partition
requests applied to the instance and the cursor committed. Printed:

* **first tick**: the evaluation of the first tick (targets: < 10 s), and the time to
  add its partitions to the instance (the daemon's work after the tick);
* **drain**: the ticks until every image is registered and requested (bounded per tick:
  ``max_runs`` run requests of up to ``batch_size`` images), the slowest one;
* **nothing new**: a tick over the unchanged folder (target: < 1 s), best and worst of 5;
* **one changed / one deleted file**: a tick after replacing / deleting one image;
* **walk**: the directory walk and ``stat`` of every file alone, for reference.

The sensor's own one-line summary of each tick is logged on stderr (``2>/dev/null``
hides it).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _write_images(folder: Path, files: int, folders: int) -> list[Path]:
    from PIL import Image

    paths = []
    for i in range(files):
        sub = folder / f"set{i % folders:03d}"
        sub.mkdir(exist_ok=True)
        buffer = io.BytesIO()
        colour = (i % 256, (i // 256) % 256, (i // 65536) % 256)
        Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
        path = sub / f"image{i:05d}.png"
        path.write_bytes(buffer.getvalue())
        paths.append(path)
    return paths


def _age(paths: list[Path], age: float) -> None:
    stamp = time.time() - age
    for path in paths:
        os.utime(path, (stamp, stamp))


class Daemon:
    """Evaluates the sensor and applies its results, as the sensor daemon does."""

    def __init__(self, instance, storage, settings) -> None:
        import dagster as dg

        from assets.definitions import build_defs
        from assets.sensors import build_incoming_images_sensor

        self.dg = dg
        self.instance = instance
        self.storage = storage
        self.defs = build_defs(storage)
        self.sensor = build_incoming_images_sensor(settings)
        self.cursor: str | None = None

    def tick(self) -> tuple[float, float, int, int]:
        """(evaluation seconds, apply seconds, run requests, images requested)."""
        dg = self.dg
        with dg.build_sensor_context(
            instance=self.instance,
            instance_ref=self.instance.get_ref(),
            cursor=self.cursor,
            definitions=self.defs,
            resources={"storage": self.storage},
        ) as context:
            started = time.perf_counter()
            data = self.sensor.evaluate_tick(context)
            evaluated = time.perf_counter() - started
        started = time.perf_counter()
        for request in data.dynamic_partitions_requests or []:
            if isinstance(request, dg.AddDynamicPartitionsRequest):
                self.instance.add_dynamic_partitions(
                    request.partitions_def_name, list(request.partition_keys)
                )
            else:
                for key in request.partition_keys:
                    self.instance.delete_dynamic_partition(request.partitions_def_name, key)
        applied = time.perf_counter() - started
        self.cursor = data.cursor
        images = 0
        for request in data.run_requests or []:
            images += int(request.tags.get("kseg/images", "1"))
        return evaluated, applied, len(data.run_requests or []), images


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--folders", type=int, default=100)
    parser.add_argument(
        "--age",
        type=float,
        default=60.0,
        help="seconds since the files were written (0: all still settling at the first tick)",
    )
    args = parser.parse_args(argv)

    import logging

    logging.getLogger("dagster").setLevel(logging.WARNING)
    from assets.incoming import scan_incoming
    from assets.run import open_instance
    from assets.sensors import SensorSettings
    from assets.storage import KsegStorage

    settings = SensorSettings.from_env()
    with tempfile.TemporaryDirectory(prefix="kseg-bench-sensor-") as tmp:
        base = Path(tmp)
        incoming = base / "incoming"
        incoming.mkdir()
        print(f"writing {args.files} 8x8 PNGs into {args.folders} folders ...", flush=True)
        started = time.perf_counter()
        paths = _write_images(incoming, args.files, args.folders)
        print(f"  {time.perf_counter() - started:.1f} s")
        storage = KsegStorage(incoming_dir=str(incoming), store_root=str(base / "store"))
        instance = open_instance(base / "home")
        try:
            daemon = Daemon(instance, storage, settings)
            print(
                f"sensor settings: max_runs={settings.max_runs}, batch_size={settings.batch_size}"
                f" (up to {settings.max_images} images per tick), "
                f"settle_seconds={settings.settle_seconds:g}"
            )
            _age(paths, args.age)
            first = daemon.tick()
            print(
                f"first tick:        {first[0]:6.2f} s evaluation + {first[1]:.2f} s adding "
                f"partitions; {first[2]} run request(s) for {first[3]} image(s)"
            )
            ticks, slowest, requested = 1, first[0], first[3]
            while True:
                evaluated, _, runs, images = daemon.tick()
                ticks += 1
                slowest = max(slowest, evaluated)
                requested += images
                if not runs:
                    break
            print(
                f"drain:             {ticks} ticks until all {requested} image(s) were "
                f"requested; slowest tick {slowest:.2f} s"
            )
            quiet = [daemon.tick()[0] for _ in range(5)]
            print(
                f"nothing new:       {min(quiet):6.2f} s best, {max(quiet):.2f} s worst, "
                f"{statistics.median(quiet):.2f} s median of 5"
            )
            victim = next(iter(sorted(incoming.glob("set000/*.png"))))
            victim.write_bytes(victim.read_bytes() + b"\0")
            stamp = time.time() - 30
            os.utime(victim, (stamp, stamp))
            changed = daemon.tick()
            print(f"one changed file:  {changed[0]:6.2f} s; {changed[2]} run request(s)")
            victim.unlink()
            deleted = daemon.tick()
            print(f"one deleted file:  {deleted[0]:6.2f} s")
            started = time.perf_counter()
            scan = scan_incoming(incoming)
            for image in scan.images:
                os.stat(image.path)
            walk = time.perf_counter() - started
            print(f"walk:              {walk:6.2f} s (scan_incoming + stat of {len(scan.images)})")
            ok = first[0] < 10 and max(quiet) < 1
            print(
                f"targets (first tick < 10 s, nothing-new tick < 1 s): {'met' if ok else 'MISSED'}"
            )
        finally:
            instance.dispose()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
