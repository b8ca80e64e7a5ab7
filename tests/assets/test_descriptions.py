"""Metadata and check results are derived once per stored output and reused on hits."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from dagster_helpers import check_evaluations, materializations, run_job, write_image

from assets.names import IMAGE_ASSETS
from assets.storage import KsegStorage

#: Metadata that describes this run rather than the stored output.
PER_RUN = {"cache", "seconds"}


def _content(event) -> dict:
    return {k: v for k, v in event.metadata.items() if k not in PER_RUN}


def _descriptions(store: Path) -> list[Path]:
    return sorted(store.glob("images/*/*.description.json"))


def test_a_hit_reports_the_same_metadata_and_checks_as_the_miss(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path, tmp_path: Path
) -> None:
    keys = [write_image(incoming, "a.png"), write_image(incoming, "b.png", "coffee")]
    first = run_job(instance, storage, keys)
    assert len(_descriptions(tmp_path / "store")) == len(IMAGE_ASSETS) * 2
    second = run_job(instance, storage, keys)
    before, after = materializations(first), materializations(second)
    for key, event in after.items():
        assert event.metadata["cache"].value == "hit"
        assert _content(event) == _content(before[key]), key
    checks_before, checks_after = check_evaluations(first), check_evaluations(second)
    assert checks_after.keys() == checks_before.keys()
    for key, evaluation in checks_after.items():
        assert evaluation.passed == checks_before[key].passed
        assert evaluation.metadata == checks_before[key].metadata


@pytest.mark.parametrize(
    "damage",
    ["garbage", "other-files", "other-version", "missing"],
)
def test_a_damaged_or_foreign_description_is_derived_again(
    damage: str,
    instance: dg.DagsterInstance,
    storage: KsegStorage,
    incoming: Path,
    tmp_path: Path,
) -> None:
    key = write_image(incoming, "a.png", "chelsea")
    first = run_job(instance, storage, [key])
    path = tmp_path / "store" / "images" / key / "elbow_metrics.description.json"
    document = json.loads(path.read_text())
    if damage == "garbage":
        path.write_bytes(b"\x00not json")
    elif damage == "other-files":
        document["files"] = {name: "0" * 64 for name in document["files"]}
        # A description of other bytes must not be taken, even if it claims a pass.
        document["payload"] = document["payload"].replace('"passed": true', '"passed": false')
        path.write_text(json.dumps(document))
    elif damage == "other-version":
        document["version"] = "0/0"
        document["payload"] = "{not serdes"
        path.write_text(json.dumps(document))
    else:
        path.unlink()
    second = run_job(instance, storage, [key])
    assert second.success
    event = materializations(second)["elbow_metrics", key]
    assert event.metadata["cache"].value == "hit"
    assert _content(event) == _content(materializations(first)["elbow_metrics", key])
    assert all(e.passed for e in check_evaluations(second).values())
    # Rewritten, and valid again: it describes the files the manifest lists.
    rewritten = json.loads(path.read_text())
    manifest = json.loads(path.with_name("elbow_metrics.manifest.json").read_text())
    assert rewritten["files"] == {n: e["sha256"] for n, e in manifest["files"].items()}
    assert rewritten["version"] != "0/0"
