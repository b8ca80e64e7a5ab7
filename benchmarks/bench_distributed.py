"""Throughput of the distributed profile: 1 worker against 2, beside the embedded profile.

Usage (from the repository root; needs the ``distributed`` extra, Postgres and Redis)::

    .venv/bin/python benchmarks/bench_distributed.py [--images 40] [--height 512]

Side by side in one run, on the same ``--images`` pictures ``--height`` pixels high:

* **embedded** -- ``kseg run`` in this process: local incoming folder and store, SQLite
  instance, every image in one in-process run (batches of 50);
* **1 worker**, **2 workers** -- a fresh ``kseg deploy`` stack each (Postgres, Redis,
  SeaweedFS, N Celery workers with one run at a time, daemon, webserver), the pictures
  put into the ``kseg-incoming`` bucket, then ``kseg run --submit`` queues one run per
  image; timed from the submission until the last run has finished. Automation is
  stopped (``KSEG_AUTOMATION_STATUS=stopped``) so only the submitted runs run.

It prints images per minute for each, the 2-worker / 1-worker ratio, what the queue and
the workers add per image against the embedded run, and the memory (RSS) of every
service of the 2-worker stack at its peak.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from assets import deploy  # noqa: E402  (after the path is set)
from benchmarks.bench_dagster import pictures  # noqa: E402

RUNS = """
query ($ids: [String!]) {
  runsOrError(filter: {runIds: $ids}) {
    ... on Runs { results { runId status startTime endTime } }
  }
}
"""
_DONE = ("SUCCESS", "FAILURE", "CANCELED")


def encoded(count: int, height: int) -> list[bytes]:
    """``count`` distinct PNG pictures ``height`` pixels high."""
    from PIL import Image

    out = []
    for array in pictures(count, height):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def embedded(images: list[bytes], scratch: Path) -> float:
    """Seconds of ``kseg run`` in this process over ``images`` (fresh folders)."""
    from assets.run import run_command

    incoming = scratch / "incoming"
    incoming.mkdir(parents=True)
    for i, data in enumerate(images):
        (incoming / f"picture-{i:03d}.png").write_bytes(data)
    started = time.perf_counter()
    code = run_command(
        str(incoming),
        store_root=str(scratch / "store"),
        dagster_home=scratch / "home",
        environ={},
        out=io.StringIO(),
    )
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"embedded kseg run failed with status {code}")
    return seconds


def _graphql(url: str, query: str, variables: dict) -> dict:
    body = json.dumps({"query": query, "variables": variables}).encode()
    request = urllib.request.Request(
        f"{url}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["data"]


def distributed(images: list[bytes], workers: int) -> tuple[float, dict[str, int], float]:
    """(seconds from ``kseg run --submit`` to the last run's end, peak RSS per service,
    seconds the stack took to start)."""
    folder = Path(tempfile.mkdtemp(prefix=f"kseg-bench-{workers}w-"))
    folder.chmod(0o711)  # the postgres account enters it
    began = time.perf_counter()
    stack = deploy.up(
        folder,
        workers=workers,
        ports=deploy.Ports.free(),
        environment={"KSEG_AUTOMATION_STATUS": "stopped"},
    )
    startup = time.perf_counter() - began
    peak: dict[str, int] = {}
    try:
        env = stack.env
        with deploy.s3_client(env) as client:
            for i, data in enumerate(images):
                client.put_object(Bucket="kseg-incoming", Key=f"picture-{i:03d}.png", Body=data)
        submitted = time.time()
        done = subprocess.run(
            [str(Path(sys.executable).with_name("kseg")), "run", "--submit"],
            cwd=ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"kseg run --submit failed: {done.stderr.strip()}")
        ids = re.findall(r"^kseg run: queued ([0-9a-f-]{36})$", done.stdout, flags=re.M)
        if len(ids) != len(images):
            raise SystemExit(f"expected {len(images)} runs, got: {done.stdout}")
        while True:
            services = deploy.status(folder)
            if sum(s.rss_bytes for s in services) > sum(peak.values()):
                peak = {s.name: s.rss_bytes for s in services}
            runs = _graphql(stack.url, RUNS, {"ids": ids})["runsOrError"]["results"]
            if len(runs) == len(ids) and all(run["status"] in _DONE for run in runs):
                break
            time.sleep(2)
        failed = [run["runId"] for run in runs if run["status"] != "SUCCESS"]
        if failed:
            raise SystemExit(f"{len(failed)} run(s) failed, e.g. {failed[0]}")
        seconds = max(run["endTime"] for run in runs) - submitted
    finally:
        deploy.down(folder)
        shutil.rmtree(folder, ignore_errors=True)
    return seconds, peak, startup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--height", type=int, default=512)
    args = parser.parse_args(argv)
    if problems := deploy.missing():
        print("bench_distributed: cannot start the stack: " + "; ".join(problems), file=sys.stderr)
        return 2
    images = encoded(args.images, args.height)
    n = len(images)
    with tempfile.TemporaryDirectory(prefix="kseg-bench-embedded-") as scratch:
        local = embedded(images, Path(scratch))
    one, _, startup_one = distributed(images, 1)
    two, memory, startup_two = distributed(images, 2)
    print(f"{n} pictures, {args.height} px high ({os.cpu_count()} cores, shared)")
    print(f"{'profile':<22} {'seconds':>8} {'images/min':>11}")
    for name, seconds in (("embedded (in process)", local), ("1 worker", one), ("2 workers", two)):
        print(f"{name:<22} {seconds:8.1f} {60 * n / seconds:11.1f}")
    print(f"2 workers / 1 worker: {one / two:.2f}x the throughput")
    print(
        f"per image, the queue and a worker add {one / n - local / n:.1f} s to the embedded "
        f"{local / n:.1f} s (1 worker, one run per image)"
    )
    print(f"stack start-up: {startup_one:.0f} s (1 worker), {startup_two:.0f} s (2 workers)")
    print("memory (RSS) of the 2-worker stack at its peak:")
    for name, rss in sorted(memory.items()):
        print(f"  {name:<10} {rss / 2**20:7.0f} MiB")
    print(f"  {'all':<10} {sum(memory.values()) / 2**20:7.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
