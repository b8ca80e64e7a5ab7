"""The pipeline live: a real ``dagster dev`` (webserver and daemon), nothing clicked.

:class:`~tests.e2e.server.DagsterDev` starts ``dagster dev -w workspace.yaml`` on a
free port with its own DAGSTER_HOME, incoming folder and store, and stops the whole
process group on exit, also when the test fails. The sensors are RUNNING by default.
The test

1. drops two sample photos into the incoming folder (one in a subfolder) and waits,
   bounded, until both are segmented (the sensor records them, automation runs them)
   and the report covers both;
2. replaces one photo and waits until only that one is segmented again;
3. gives the other its own K through the ``set_image_settings`` job launched over
   GraphQL as the UI does: a bad value is refused at launch (no run exists), a good one
   re-segments that image with that K;
4. deletes a photo and waits until its partition is gone, its outputs are in the
   store's ``trash/`` and the report covers exactly the remaining image, its check passed.

The sensor and automation intervals are shortened through the environment.
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
from assets.names import IMAGE_ASSETS, REPORT
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
    ... on Runs { results { runId status jobName tags { key value } } }
  }
}
"""
REPORT_STATE = """
query {
  assetNodeOrError(assetKey: {path: ["segmentation_report"]}) {
    ... on AssetNode {
      assetMaterializations(limit: 1) {
        runId
        metadataEntries { label ... on IntMetadataEntry { intValue } }
      }
      assetChecksOrError {
        ... on AssetChecks { checks { name executionForLatestMaterialization { status } } }
      }
    }
  }
}
"""
LAUNCH = """
mutation ($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message causes { message } }
    ... on RunConfigValidationInvalid { errors { message } }
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


def report(dev: DagsterDev) -> tuple[int | None, str | None]:
    """(images in the latest report, status of its coverage check)."""
    node = dev.graphql(REPORT_STATE)["assetNodeOrError"]
    latest = node["assetMaterializations"]
    images = None
    if latest:
        entries = {e["label"]: e.get("intValue") for e in latest[0]["metadataEntries"]}
        images = entries.get("images")
    checks = node["assetChecksOrError"]["checks"]
    execution = checks[0]["executionForLatestMaterialization"] if checks else None
    return images, execution["status"] if execution else None


def launch_settings(dev: DagsterDev, config: dict[str, Any]) -> dict[str, Any]:
    params = {
        "selector": {
            "repositoryLocationName": "kseg",
            "repositoryName": "__repository__",
            "jobName": "set_image_settings",
        },
        "runConfigData": config,
    }
    import json
    import urllib.error

    try:
        return dev.graphql(LAUNCH, {"params": params})["launchRun"]
    except urllib.error.HTTPError as exc:  # a refused launch answers 500 with the error
        return json.loads(exc.read())["data"]["launchRun"]


def chosen_k(dev: DagsterDev, key: str) -> int | None:
    import json

    path = dev.store / "images" / key / "chosen_k.json"
    return json.loads(path.read_text())["chosen_k"] if path.is_file() else None


def test_images_are_segmented_replaced_given_their_own_k_and_deleted_live(
    tmp_path: Path,
) -> None:
    with DagsterDev(tmp_path, env=ENV) as dev:
        assert sensor_status(dev, SENSOR_NAME) == "RUNNING"
        assert sensor_status(dev, AUTOMATION_SENSOR_NAME) == "RUNNING"

        # 1. Two new photos are segmented without anyone clicking anything.
        a = drop(dev.incoming, "astronaut.png", "astronaut")
        b = drop(dev.incoming, "trip/coffee.png", "coffee")
        dev.wait_for(
            lambda: (
                (segmented(dev, a) and segmented(dev, b) and report(dev) == (2, "SUCCEEDED"))
                or failed_runs(dev)
            ),
            timeout=SEGMENT_TIMEOUT,
            what="both photos segmented and reported",
        )
        assert failed_runs(dev) == []
        assert sorted(asset(dev, "raw_image")["partitionKeys"]) == sorted([a, b])
        first_a, first_b = materialisations(dev, a), materialisations(dev, b)
        assert all(len(first_a[n]) == 1 and len(first_b[n]) == 1 for n in IMAGE_ASSETS)
        for run in runs(dev):  # every run is automation's (one per image, or one batch)
            assert run["tags"].get("dagster/sensor_name") == AUTOMATION_SENSOR_NAME, run

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
        seen = [(r["status"], r["tags"]) for r in runs(dev)]  # shown when an assert fails
        assert materialisations(dev, b) == first_b, seen
        again = materialisations(dev, a)
        assert all(len(again[n]) == len(first_a[n]) + 1 for n in IMAGE_ASSETS), (again, seen)
        raw = dev.store / "images" / a / "raw_image.manifest.json"
        assert '"source_path": "astronaut.png"' in raw.read_text()

        # 3. The other photo gets its own K, from the launchpad's job. A bad request is
        # refused when launched, naming every bad field, and no run is created.
        before = len(runs(dev))
        refused = launch_settings(dev, {"images": [b], "k": 99, "k_max": 1})
        text = str(refused)
        assert refused["__typename"] != "LaunchRunSuccess", refused
        assert "k: must be empty or an integer between 1 and 64" in text
        assert "k_max: must be between 2 and 64" in text
        assert len(runs(dev)) == before
        other = 7 if chosen_k(dev, b) != 7 else 6
        accepted = launch_settings(dev, {"images": [b], "k": other})
        assert accepted["__typename"] == "LaunchRunSuccess", accepted
        dev.wait_for(
            lambda: chosen_k(dev, b) == other or failed_runs(dev),
            timeout=SEGMENT_TIMEOUT,
            what="the image re-segmented with its own K",
        )
        assert failed_runs(dev) == []
        assert materialisations(dev, b)["raw_image"] == first_b["raw_image"]  # not re-read

        # 4. Delete it: its partition goes, its outputs go to the trash, the report follows.
        (dev.incoming / "trip" / "coffee.png").unlink()
        dev.wait_for(
            lambda: (
                b not in asset(dev, "raw_image")["partitionKeys"]
                and report(dev) == (1, "SUCCEEDED")
            ),
            timeout=DELETE_TIMEOUT,
            what="the deleted photo's partition removed and the report rebuilt",
        )
        assert asset(dev, "raw_image")["partitionKeys"] == [a]
        assert not (dev.store / "images" / b).exists()
        trashed = [p for p in (dev.store / "trash").iterdir() if p.name.endswith(f"-{b}")]
        assert len(trashed) == 1 and (trashed[0] / "outputs" / "segmented_image.png").is_file()
        assert (trashed[0] / "settings.json").is_file() and (trashed[0] / "trashed.json").is_file()
        assert (dev.store / "images" / a / "segmented_image.png").is_file()
        assert failed_runs(dev) == []
        assert REPORT  # (the report asset the queries above read)
