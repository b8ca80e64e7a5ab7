"""The incoming-folder sensor, live: a real ``dagster dev`` (webserver and daemon).

:class:`~tests.e2e.server.DagsterDev` starts ``dagster dev -w workspace.yaml`` on a
free port with its own DAGSTER_HOME, incoming folder and store, and stops the whole
process group on exit, also when the test fails. Nothing is started by hand: the
sensors are RUNNING by default. The test

1. drops two sample photos into the incoming folder (one in a subfolder) and waits,
   bounded, until both are segmented: every per-image asset materialised for both
   partitions (GraphQL) and the outputs on disk;
2. replaces one photo and waits until only that one is segmented again: new
   materialisations for it, none for the other, no run but the sensor's;
3. deletes the other photo and waits until its partition is gone, with its outputs
   moved to the store's ``trash/``.

The sensor interval is shortened to 2 s through ``KSEG_SENSOR_INTERVAL_SECONDS``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from assets.automation import AUTOMATION_SENSOR_NAME
from assets.incoming import partition_key_for
from assets.keys import IMAGE_ASSETS
from assets.sensors import SENSOR_NAME

from .server import DagsterDev

pytestmark = pytest.mark.e2e

ENV = {
    "KSEG_SENSOR_INTERVAL_SECONDS": "2",
    "KSEG_SENSOR_SETTLE_SECONDS": "0.5",
    "KSEG_AUTOMATION_INTERVAL_SECONDS": "5",
}
#: Bounds (seconds).
SEGMENT_TIMEOUT = 300
DELETE_TIMEOUT = 90
OUTPUTS = ("raw_image.png", "segmented_image.png", "label_map.png", "segment_stats.parquet")

SENSOR_STATE = """
query ($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status } }
    ... on PythonError { message }
  }
}
"""
ASSET = """
query ($path: [String!]!, $partitions: [String!]) {
  assetNodeOrError(assetKey: {path: $path}) {
    __typename
    ... on AssetNode {
      partitionKeys
      assetMaterializations(partitions: $partitions) { runId partition }
    }
  }
}
"""
RUNS = """
query {
  runsOrError {
    __typename
    ... on Runs { results { runId status tags { key value } } }
  }
}
"""


def photo(name: str, height: int = 64) -> Image.Image:
    """A scikit-image sample photo, ``height`` pixels high."""
    from skimage import data, transform

    image = getattr(data, name)()[..., :3]
    width = round(image.shape[1] * height / image.shape[0])
    small = transform.resize(image, (height, width), anti_aliasing=True)
    return Image.fromarray(np.clip(np.rint(small * 255), 0, 255).astype(np.uint8))


def drop(folder: Path, relpath: str, name: str) -> str:
    """Write a photo the way a careful uploader does (temporary name, then rename)."""
    target = folder / relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    photo(name).save(partial, format="PNG")
    os.replace(partial, target)
    return partition_key_for(relpath)


def sensor_status(dev: DagsterDev, name: str) -> str:
    selector = {
        "repositoryLocationName": "kseg",
        "repositoryName": "__repository__",
        "sensorName": name,
    }
    found = dev.graphql(SENSOR_STATE, {"selector": selector})["sensorOrError"]
    assert found["__typename"] == "Sensor", found
    return found["sensorState"]["status"]


def asset(dev: DagsterDev, name: str, partitions: list[str] | None = None) -> dict[str, Any]:
    found = dev.graphql(ASSET, {"path": [name], "partitions": partitions})["assetNodeOrError"]
    assert found["__typename"] == "AssetNode", found
    return found


def materialisations(dev: DagsterDev, key: str) -> dict[str, list[str]]:
    """Per-image asset -> run ids of its materialisations of partition ``key``."""
    return {
        name: [m["runId"] for m in asset(dev, name, [key])["assetMaterializations"]]
        for name in IMAGE_ASSETS
    }


def runs(dev: DagsterDev) -> list[dict[str, Any]]:
    found = dev.graphql(RUNS)["runsOrError"]
    assert found["__typename"] == "Runs", found
    return [
        {**run, "tags": {t["key"]: t["value"] for t in run["tags"]}} for run in found["results"]
    ]


def segmented(dev: DagsterDev, key: str, after: set[str] | None = None) -> bool:
    """Every per-image asset of ``key`` materialised (by a run not in ``after``), files on disk."""
    found = materialisations(dev, key)
    done = all(set(ids) - (after or set()) for ids in found.values())
    folder = dev.store / "images" / key
    return done and all((folder / name).is_file() for name in OUTPUTS)


def failed_runs(dev: DagsterDev) -> list[str]:
    return [run["runId"] for run in runs(dev) if run["status"] == "FAILURE"]


def test_the_sensor_segments_replaces_and_deletes_images_live(tmp_path: Path) -> None:
    with DagsterDev(tmp_path, env=ENV) as dev:
        assert sensor_status(dev, SENSOR_NAME) == "RUNNING"
        assert sensor_status(dev, AUTOMATION_SENSOR_NAME) == "RUNNING"

        # 1. Two new photos are segmented without anyone clicking anything.
        a = drop(dev.incoming, "astronaut.png", "astronaut")
        b = drop(dev.incoming, "trip/coffee.png", "coffee")
        dev.wait_for(
            lambda: (segmented(dev, a) and segmented(dev, b)) or failed_runs(dev),
            timeout=SEGMENT_TIMEOUT,
            what="both photos segmented",
        )
        assert failed_runs(dev) == []
        assert sorted(asset(dev, "raw_image")["partitionKeys"]) == sorted([a, b])
        first_a, first_b = materialisations(dev, a), materialisations(dev, b)
        launched = [r for r in runs(dev) if r["tags"].get("dagster/sensor_name") == SENSOR_NAME]
        assert sorted(r["tags"].get("dagster/partition") for r in launched) == sorted([a, b])
        assert all(r["status"] == "SUCCESS" for r in launched)

        # 2. Replace one photo: only it is segmented again.
        old_runs = {run_id for ids in first_a.values() for run_id in ids}
        drop(dev.incoming, "astronaut.png", "chelsea")
        dev.wait_for(
            lambda: segmented(dev, a, after=old_runs) or failed_runs(dev),
            timeout=SEGMENT_TIMEOUT,
            what="the replaced photo segmented again",
        )
        assert failed_runs(dev) == []
        time.sleep(2 * int(ENV["KSEG_AUTOMATION_INTERVAL_SECONDS"]))  # room for a stray run
        everything = runs(dev)
        seen = [(r["status"], r["tags"]) for r in everything]  # shown when an assert fails
        assert materialisations(dev, b) == first_b, seen
        again = materialisations(dev, a)
        assert all(len(again[n]) == len(first_a[n]) + 1 for n in IMAGE_ASSETS), (again, seen)
        assert len(everything) == 3, seen
        assert all(r["tags"].get("dagster/sensor_name") == SENSOR_NAME for r in everything)
        raw = dev.store / "images" / a / "raw_image.manifest.json"
        assert '"source_path": "astronaut.png"' in raw.read_text()

        # 3. Delete the other photo: its partition goes, its outputs go to the trash.
        (dev.incoming / "trip" / "coffee.png").unlink()
        dev.wait_for(
            lambda: b not in asset(dev, "raw_image")["partitionKeys"],
            timeout=DELETE_TIMEOUT,
            what="the deleted photo's partition removed",
        )
        assert asset(dev, "raw_image")["partitionKeys"] == [a]
        assert not (dev.store / "images" / b).exists()
        trashed = [p for p in (dev.store / "trash").iterdir() if p.name.endswith(f"-{b}")]
        assert len(trashed) == 1 and (trashed[0] / "segmented_image.png").is_file()
        assert (trashed[0] / "trashed.json").is_file()
        assert (dev.store / "images" / a / "segmented_image.png").is_file()
