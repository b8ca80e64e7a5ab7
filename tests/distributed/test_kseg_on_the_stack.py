"""kseg's own pipeline on the distributed stack, from images in a bucket to outputs in another.

A scenario in order, on the session's stack (``conftest.py``): images are put into
the ``kseg-incoming`` bucket; the sensor registers them and automation segments them
through the run queue on both Celery workers; every output and manifest is in the
``kseg-store`` bucket and verifies; a half-uploaded object (a multipart upload not yet
completed) is not taken until it completes. Then ``kseg run --submit`` queues runs
twice per image and the run queue keeps two runs of one image apart while different
images run side by side. Last, the worker process running an image is killed with
SIGKILL: run monitoring marks the run failed, and ``kseg run --submit`` (which plans
only that image) completes it with outputs identical to a clean run of the same bytes.
What the tests read of runs and materializations they read from Postgres in a process
of their own (``read_instance.py``).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from assets import deploy
from assets.incoming import partition_key_for
from assets.names import IMAGE_ASSETS

from .stack_helpers import (
    NEEDS_STACK,
    RUN_TIMEOUT,
    leader_pids,
    messages,
    processes_in,
    s3_client,
)

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(900), NEEDS_STACK]

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
INCOMING, STORE = "kseg-incoming", "kseg-store"
NAMES = [f"drop/photo-{i}.png" for i in range(4)]
#: Uploaded in parts, completed only in the kill test; the same bytes as NAMES[0].
LATE = "late/same-as-photo-0.png"
_UPLOAD: dict[str, Any] = {}


def _png(seed: int, size: int = 56) -> bytes:
    """A small photo-like PNG: four colour blocks with noise, different for each seed."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(2, 2, 3)).astype(float)
    blocks = np.kron(colours, np.ones((size // 2, size // 2, 1)))
    noisy = np.clip(blocks + rng.normal(0, 6, size=blocks.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, "PNG")
    return buffer.getvalue()


def _instance(stack: deploy.Stack) -> dict[str, Any]:
    """The runs, partitions and materializations, read from Postgres by another process."""
    done = subprocess.run(
        [sys.executable, str(HERE / "read_instance.py")],
        cwd=REPO,
        env={**os.environ, **stack.env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout)


def _kseg(stack: deploy.Stack, *args: str) -> subprocess.CompletedProcess[str]:
    kseg = Path(sys.executable).with_name("kseg")
    return subprocess.run(
        [str(kseg), *args],
        cwd=REPO,
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _manifests(client: Any, key: str) -> dict[str, dict]:
    found = {}
    for asset in IMAGE_ASSETS:
        try:
            body = client.get_object(Bucket=STORE, Key=f"images/{key}/{asset}.manifest.json")
        except client.exceptions.NoSuchKey:
            continue
        found[asset] = json.loads(body["Body"].read())
    return found


def _table(client: Any, key: str, name: str) -> Any:
    """A stored Parquet table without its timing columns (``seconds``, wall time)."""
    import pyarrow.parquet as pq

    body = client.get_object(Bucket=STORE, Key=f"images/{key}/{name}")["Body"].read()
    assert name.endswith(".parquet"), f"{key}/{name} differs from a clean run's"
    table = pq.read_table(io.BytesIO(body))
    return table.drop_columns([c for c in table.column_names if "seconds" in c])


def _wait(what: str, condition: Any, timeout: float = RUN_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"not in {timeout:.0f} s: {what}"
        time.sleep(2)


def _runs_of(state: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return [run for run in state["runs"] if run["partition"] == key]


def _worker_of(stack: deploy.Stack, task_id: str) -> str:
    from celery import Celery

    app = Celery(
        "kseg-test",
        broker=stack.env["DAGSTER_CELERY_BROKER_URL"],
        backend=stack.env["DAGSTER_CELERY_BACKEND_URL"],
        set_as_current=False,
    )
    try:
        return app.AsyncResult(task_id).worker.split("@")[0].removeprefix("kseg-")
    finally:
        app.close()


def test_images_put_in_the_bucket_are_segmented_on_both_workers(stack: deploy.Stack) -> None:
    keys = [partition_key_for(name) for name in NAMES]
    with s3_client(stack) as client:
        # Half uploaded: a multipart upload with its one part sent, not completed.
        upload = client.create_multipart_upload(Bucket=INCOMING, Key=LATE)["UploadId"]
        part = client.upload_part(
            Bucket=INCOMING, Key=LATE, UploadId=upload, PartNumber=1, Body=_png(0)
        )
        _UPLOAD.update(id=upload, etag=part["ETag"])
        for i, name in enumerate(NAMES):
            client.put_object(Bucket=INCOMING, Key=name, Body=_png(i))
        _wait(
            "every image segmented",
            lambda: all(len(_manifests(client, key)) == len(IMAGE_ASSETS) for key in keys),
        )
        for key in keys:  # every output is in the bucket with the checksum its manifest has
            for asset, manifest in _manifests(client, key).items():
                assert manifest["partition"] == key and manifest["asset"] == asset
                for name, entry in manifest["files"].items():
                    data = client.get_object(Bucket=STORE, Key=f"images/{key}/{name}")
                    body = data["Body"].read()
                    assert hashlib.sha256(body).hexdigest() == entry["sha256"], (key, name)
                    assert len(body) == entry["bytes"]
        stored = [o["Key"] for o in client.list_objects_v2(Bucket=STORE).get("Contents", [])]
    assert not [name for name in stored if name.endswith(".tmp")], stored

    state = _instance(stack)
    assert state["storage"] == "PostgresRunStorage"
    late = partition_key_for(LATE)
    assert set(state["partitions"]) == set(keys)  # the half-uploaded object is not an image
    assert late not in state["partitions"]
    for asset, partitions in state["materialized"].items():
        assert set(partitions) == set(keys), asset
    runs = [run for key in keys for run in _runs_of(state, key)]
    assert {run["partition"] for run in runs} == set(keys)  # one image per run (batch size 1)
    # Automation may still be running follow-up runs; none has failed.
    assert not [run for run in runs if run["status"] in ("FAILURE", "CANCELED")], runs
    runs = [run for run in runs if run["status"] == "SUCCESS"]
    workers = {_worker_of(stack, run["task"]) for run in runs}
    assert workers == {"worker-1", "worker-2"}, workers
    logs = {
        name: (stack.folder / name / f"{name}.log").read_text(errors="replace")
        for name in ("worker-1", "worker-2")
    }
    for run in runs:  # the worker that the result backend names received the task
        worker = _worker_of(stack, run["task"])
        assert f"Task execute_job[{run['task']}] received" in logs[worker]


def test_runs_of_one_image_never_overlap_while_images_run_side_by_side(
    stack: deploy.Stack,
) -> None:
    keys = [partition_key_for(name) for name in NAMES]
    before = {run["id"] for run in _instance(stack)["runs"]}
    for _ in range(2):  # every image twice, all queued at once
        done = _kseg(stack, "run", "--submit", "--all")
        assert done.returncode == 0, done.stderr
        assert f"queued {len(keys)} run(s) for {len(keys)} image(s)" in done.stdout
        assert stack.url in done.stdout

    def finished() -> list[dict[str, Any]] | None:
        new = [
            run
            for run in _instance(stack)["runs"]
            if run["id"] not in before and run["job"] == "segment_images"
        ]
        over = all(run["status"] in ("SUCCESS", "FAILURE", "CANCELED") for run in new)
        return new if len(new) == 2 * len(keys) and over else None

    submitted = _wait("the submitted runs finished", finished)
    assert all(run["status"] == "SUCCESS" for run in submitted), submitted
    assert sorted(run["partition"] for run in submitted) == sorted(keys * 2)
    # Every run of an image so far (automation's too), in the order they started: each
    # ended before the next began.
    runs = [
        {**run, "end": run["end"] or float("inf")}  # in progress: not ended yet
        for run in _instance(stack)["runs"]
        if run["partition"] in keys and run["start"] is not None  # queued: not started
    ]
    for key in keys:
        ordered = sorted(_runs_of({"runs": runs}, key), key=lambda run: run["start"])
        for first, second in itertools.pairwise(ordered):
            assert first["end"] <= second["start"], (key, first, second)  # never together
    side_by_side = [
        (a["partition"], b["partition"])
        for a in runs
        for b in runs
        if a["partition"] < b["partition"] and a["start"] < b["end"] and b["start"] < a["end"]
    ]
    assert side_by_side, runs  # different images did run at the same time


def test_a_killed_worker_fails_its_run_and_a_rerun_gives_a_clean_run_s_outputs(
    stack: deploy.Stack,
) -> None:
    late = partition_key_for(LATE)
    with s3_client(stack) as client:
        client.complete_multipart_upload(
            Bucket=INCOMING,
            Key=LATE,
            UploadId=_UPLOAD["id"],
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": _UPLOAD["etag"]}]},
        )

        def running() -> dict[str, Any] | None:
            found = [run for run in _runs_of(_instance(stack), late) if run["status"] == "STARTED"]
            return found[0] if found else None

        run = _wait("the completed upload's run started", running)
        # Mid-run: after its first step, in the worker's pool process that runs it.
        _wait(
            "the first step done",
            lambda: any(
                '"raw_image"' in m for _, m in messages(stack, run["id"]) if "Finished" in m
            ),
        )
        pids = {int(p) for _, m in messages(stack, run["id"]) for p in re.findall(r"pid: (\d+)", m)}
        workers = {name: pid for name, pid in stack.pids.items() if name.startswith("worker-")}
        (victim,) = pids & set(processes_in(stack.folder, set(workers.values())))
        os.kill(victim, signal.SIGKILL)

        def failed() -> dict[str, Any] | None:
            found = [r for r in _runs_of(_instance(stack), late) if r["id"] == run["id"]]
            return found[0] if found and found[0]["status"] != "STARTED" else None

        assert _wait("run monitoring's verdict", failed, timeout=180)["status"] == "FAILURE"
        text = " ".join(m for _, m in messages(stack, run["id"]))
        assert "Celery task failed" in text, text[-2000:]
        assert len(_manifests(client, late)) < len(IMAGE_ASSETS)
        assert all(service.answering for service in deploy.status(stack.folder))

        done = _kseg(stack, "run", "--submit")  # plans exactly the image left incomplete
        assert done.returncode == 0, done.stderr
        assert "queued 1 run(s) for 1 image(s)" in done.stdout, done.stdout
        (rerun,) = re.findall(r"queued ([0-9a-f-]{36})$", done.stdout, flags=re.M)

        def succeeded() -> dict[str, Any] | None:
            found = [r for r in _instance(stack)["runs"] if r["id"] == rerun]
            return found[0] if found and found[0]["status"] in ("SUCCESS", "FAILURE") else None

        assert _wait("the rerun", succeeded)["status"] == "SUCCESS"
        again, clean = _manifests(client, late), _manifests(client, partition_key_for(NAMES[0]))
        assert set(again) == set(IMAGE_ASSETS)
        for asset in IMAGE_ASSETS:  # the same bytes give the same outputs, file for file
            assert set(again[asset]["files"]) == set(clean[asset]["files"]), asset
            for name, entry in again[asset]["files"].items():
                if entry == clean[asset]["files"][name]:
                    continue
                # Only the sweep's timings may differ (elbow_metrics' seconds per K).
                tables = [_table(client, key, name) for key in (late, partition_key_for(NAMES[0]))]
                assert tables[0].equals(tables[1]), (asset, name)
    assert leader_pids(stack.folder) == set(stack.pids.values())


def test_scans_and_the_store_see_what_other_clients_wrote_after_a_listing(
    stack: deploy.Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from upath import UPath

    from assets.incoming import look, scan_incoming
    from assets.storage import Store

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.setenv(name, stack.env[name])
    monkeypatch.setenv("AWS_DEFAULT_REGION", stack.env["AWS_DEFAULT_REGION"])
    bucket = "kseg-scratch"  # not the incoming bucket: the sensor would take these
    with s3_client(stack) as client:
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="in/a.png", Body=_png(10))
        root = UPath(f"s3://{bucket}/in")
        assert [image.relpath for image in scan_incoming(root).images] == ["a.png"]
        first = look(root / "a.png")
        client.put_object(Bucket=bucket, Key="in/b.png", Body=_png(11))
        client.put_object(Bucket=bucket, Key="in/a.png", Body=_png(12))
        # s3fs caches listings for ever in a process: the next scan still sees b.png.
        assert [image.relpath for image in scan_incoming(root).images] == ["a.png", "b.png"]
        assert look(root / "a.png") != first  # a new ETag, not the cached one

        store = Store(f"s3://{bucket}/store")
        key = partition_key_for("a.png")
        assert store.partitions_with_own_settings() == set()
        saved = store.save(key, "raw_image", cache_key="k", code_version="1", files={"x.png": b"x"})
        client.put_object(Bucket=bucket, Key=f"store/settings/{key}.json", Body=b"{}")
        assert store.partitions_with_own_settings() == {key}
        assert store.intact(key, "raw_image", "k") == saved
        names = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
        # One PUT per file: no temporary objects, written or left behind.
        assert sorted(n for n in names if n.startswith("store/images/")) == [
            f"store/images/{key}/raw_image.manifest.json",
            f"store/images/{key}/x.png",
        ]
        client.put_object(Bucket=bucket, Key=f"store/images/{key}/x.png", Body=b"y")
        assert store.intact(key, "raw_image", "k") is None  # the checksum catches it
