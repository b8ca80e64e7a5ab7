"""Memory at the largest sizes: one image's peak, and many large images dropped at once.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_memory.py [--images 3] [--megapixels 60]
        [--image-runs N] [--single 100]

* **single** -- peak resident memory of a whole ``kseg segment`` and of a whole
  ``kseg run`` (one pipeline run, in process) on one ``--single``-megapixel JPEG mosaic
  (scaled as ``bench_engine.py`` builds its mosaic), in bytes per pixel (target <= 25);
* **dropped at once** -- ``--images`` JPEG mosaics of ``--megapixels`` dropped at once
  into the incoming folder of a real ``dagster dev`` (sensor and automation running,
  one image per run as on the distributed profile, ``KSEG_BATCH_SIZE=1``, so each image
  is its own run), with the instance's memory budget (``--image-runs`` runs of per-image
  steps at once; default: what kseg writes for this machine). It samples the resident
  memory of every process of the ``dagster dev`` process group (webserver, daemon, code
  servers, run workers) every 0.25 s and prints the peak, the most runs active at once
  and the time until every image was segmented.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import make_mosaic  # noqa: E402

from tests.e2e.server import DagsterDev  # noqa: E402  (after the path is set)

KSEG = Path(sys.executable).with_name("kseg")
RUNS = """
query { runsOrError { ... on Runs { results { runId status assetSelection { path } } } } }
"""
ACTIVE = {"STARTING", "STARTED"}


def _size(megapixels: float) -> tuple[int, int]:
    """Width and height of a 4:3 mosaic of about ``megapixels``."""
    height = round((megapixels * 1e6 * 3 / 4) ** 0.5)
    return round(height * 4 / 3), height


def _peak_of(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(peak resident bytes, wall seconds) of a whole command, from GNU time's report."""
    started = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *args], env=env, capture_output=True, text=True, check=True
    )
    wall = time.perf_counter() - started
    return int(done.stderr.strip().splitlines()[-1]) * 1024, wall


def single(megapixels: float, tmp: Path) -> dict[str, float]:
    """Peak memory of kseg segment and of one kseg run on one mosaic."""
    width, height = _size(megapixels)
    folder = tmp / "single"
    (folder / "incoming").mkdir(parents=True)
    image = make_mosaic(folder / "incoming" / "mosaic.jpg", width=width, height=height)
    pixels = width * height
    env = {**os.environ, "KSEG_AUTOMATION_STATUS": "stopped"}
    segment, segment_wall = _peak_of(
        [str(KSEG), "segment", str(image), "--out", str(folder / "out"), "--quiet"], env
    )
    run_env = {
        **env,
        "DAGSTER_HOME": str(folder / "home"),
        "KSEG_STORE_ROOT": str(folder / "store"),
        "KSEG_INCOMING_DIR": str(folder / "incoming"),
    }
    (folder / "home").mkdir()
    pipeline, pipeline_wall = _peak_of([str(KSEG), "run"], run_env)
    return {
        "pixels": pixels,
        "segment": segment / pixels,
        "segment_wall": segment_wall,
        "run": pipeline / pixels,
        "run_wall": pipeline_wall,
    }


def _group_rss(pgid: int) -> int:
    """Resident bytes of every process in process group ``pgid``."""
    total = 0
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid:  # field 5 of stat: the process group
                total += int(Path(f"/proc/{entry}/statm").read_text().split()[1]) * page
        except (OSError, ValueError):
            continue
    return total


def _runs_image_steps(run: dict) -> bool:
    """Whether a run (GraphQL) materialises per-image steps (the report's runs do not)."""
    from assets.names import IMAGE_ASSETS

    selected = {"/".join(key["path"]) for key in run.get("assetSelection") or []}
    return bool(selected & set(IMAGE_ASSETS))


def dropped_at_once(
    count: int, megapixels: float, image_runs: int | None, tmp: Path
) -> dict[str, float]:
    """Drop ``count`` large images at once; peak memory and concurrency until all are done."""
    from assets.incoming import partition_key_for

    width, height = _size(megapixels)
    staged = [
        make_mosaic(tmp / f"big{i}.jpg", width=width, height=height, seed=i) for i in range(count)
    ]
    env = {
        "KSEG_SENSOR_INTERVAL_SECONDS": "2",
        "KSEG_AUTOMATION_INTERVAL_SECONDS": "5",
        "KSEG_SENSOR_SETTLE_SECONDS": "0.5",
        "KSEG_BATCH_SIZE": "1",
    }
    with DagsterDev(tmp / "dev", env=env, image_runs=image_runs) as dev:
        limit = (dev.home / "dagster.yaml").read_text().split("default_limit:")[1].split()[0]
        assert dev.proc is not None
        pgid = os.getpgid(dev.proc.pid)
        time.sleep(10)  # the sensors' first ticks
        baseline = _group_rss(pgid)
        peak = [baseline]
        most_active = [0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.25):
                peak[0] = max(peak[0], _group_rss(pgid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        dropped = time.perf_counter()
        for path in staged:
            path.rename(dev.incoming / path.name)
        keys = [partition_key_for(path.name) for path in staged]

        def all_done() -> bool:
            found = dev.graphql(RUNS)["runsOrError"]["results"]
            images = [r for r in found if _runs_image_steps(r)]
            most_active[0] = max(most_active[0], sum(r["status"] in ACTIVE for r in images))
            assert not [r for r in found if r["status"] == "FAILURE"], dev.log_tail()
            folders = [dev.store / "images" / key for key in keys]
            return all((f / "region_stats.manifest.json").is_file() for f in folders)

        dev.wait_for(all_done, timeout=3600, interval=1.0, what="every large image")
        seconds = time.perf_counter() - dropped
        stop.set()
        sampler.join()
    return {
        "limit": float(limit),
        "baseline": baseline,
        "peak": peak[0],
        "most_active": most_active[0],
        "seconds": seconds,
        "pixels": width * height,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=3, help="large images dropped at once")
    parser.add_argument("--megapixels", type=float, default=60)
    parser.add_argument("--image-runs", type=int, default=None, help="the instance's budget")
    parser.add_argument("--single", type=float, default=100, help="0 to skip")
    args = parser.parse_args(argv)
    from assets.instance import machine_memory

    with tempfile.TemporaryDirectory(prefix="kseg-bench-memory-") as tmp:
        tmp_path = Path(tmp)
        if args.single:
            one = single(args.single, tmp_path)
            print(
                f"one image, {one['pixels'] / 1e6:.0f} MP: kseg segment "
                f"{one['segment']:.1f} B/px ({one['segment'] * one['pixels'] / 1e9:.2f} GB, "
                f"{one['segment_wall']:.1f} s); kseg run {one['run']:.1f} B/px "
                f"({one['run'] * one['pixels'] / 1e9:.2f} GB, {one['run_wall']:.1f} s); "
                "target <= 25 B/px",
                flush=True,
            )
        if args.images:
            many = dropped_at_once(args.images, args.megapixels, args.image_runs, tmp_path)
            gb = 1e9
            print(
                f"{args.images} images of {many['pixels'] / 1e6:.0f} MP dropped at once, "
                f"budget {many['limit']:.0f} image run(s) at once "
                f"(machine {machine_memory() / gb:.1f} GB): peak {many['peak'] / gb:.2f} GB "
                f"for the whole dagster dev ({many['baseline'] / gb:.2f} GB idle), at most "
                f"{many['most_active']} run(s) active at once, all segmented in "
                f"{many['seconds']:.0f} s",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
