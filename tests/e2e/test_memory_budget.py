"""The memory budget live: runs of images beyond the instance's limit wait in the queue.

A real ``dagster dev`` on an instance whose budget is one run of per-image steps at a
time (``concurrency.pools`` at run granularity, pool ``kseg_images``). Two images are
registered and two runs launched at once over GraphQL, as the UI launches them, both
between two passes of the run queue: the second must stay queued until the first has
finished, and both must succeed. The second test shows the Dagster gap kseg works
around (``assets.dagster_gaps``, gap 3): on the bare configuration, without kseg
opening the instance first, both start together.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from assets.incoming import partition_key_for
from assets.names import IMAGE_POOL, PARTITIONS_NAME

from .server import DagsterDev
from .test_live_sensor import LAUNCH, photo

pytestmark = pytest.mark.e2e

REPOSITORY = {"repositoryLocationName": "kseg", "repositoryName": "__repository__"}
ADD_PARTITION = """
mutation ($selector: RepositorySelector!, $name: String!, $key: String!) {
  addDynamicPartition(repositorySelector: $selector, partitionsDefName: $name, partitionKey: $key) {
    __typename
    ... on PythonError { message }
  }
}
"""
RUNS = """
query {
  runsOrError {
    ... on Runs { results { runId status startTime endTime } }
  }
}
"""
POOL = """
query ($pool: String!) {
  instance { poolConfig { poolGranularity } concurrencyLimit(concurrencyKey: $pool) { slotCount } }
}
"""
ACTIVE = {"STARTING", "STARTED", "CANCELING"}
DONE = {"SUCCESS", "FAILURE", "CANCELED"}


def _two_runs(dev: DagsterDev) -> tuple[list[dict[str, str]], bool, list[dict]]:
    """Register two images and launch one run each; wait for both. Returns the
    statuses seen with both active, whether one was seen queued while the other was
    active, and the two runs (GraphQL) in start order."""
    keys = []
    for name in ("astronaut", "coffee"):
        path = dev.incoming / f"{name}.png"
        photo(name, 96).save(path)
        key = partition_key_for(path.name)
        variables = {"selector": REPOSITORY, "name": PARTITIONS_NAME, "key": key}
        added = dev.graphql(ADD_PARTITION, variables)["addDynamicPartition"]
        assert added["__typename"] == "AddDynamicPartitionSuccess", added
        keys.append(key)
    run_ids = []
    for key in keys:
        params = {
            "selector": {**REPOSITORY, "jobName": "segment_images"},
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": key}]},
        }
        launched = dev.graphql(LAUNCH, {"params": params})["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_ids.append(launched["run"]["runId"])

    overlap: list[dict[str, str]] = []
    seen_waiting = False

    def finished() -> dict[str, dict] | None:
        nonlocal seen_waiting
        found = {r["runId"]: r for r in dev.graphql(RUNS)["runsOrError"]["results"]}
        ours = {run_id: found[run_id] for run_id in run_ids}
        statuses = {run_id: run["status"] for run_id, run in ours.items()}
        if sum(status in ACTIVE for status in statuses.values()) > 1:
            overlap.append(statuses)
        if "QUEUED" in statuses.values() and any(s in ACTIVE for s in statuses.values()):
            seen_waiting = True
        return ours if all(status in DONE for status in statuses.values()) else None

    done = dev.wait_for(finished, timeout=300, interval=0.5, what="both image runs")
    assert [done[run_id]["status"] for run_id in run_ids] == ["SUCCESS", "SUCCESS"]
    for key in keys:
        assert (dev.store / "images" / key / "region_stats.parquet").is_file()
    return overlap, seen_waiting, sorted(done.values(), key=lambda run: run["startTime"])


def test_a_second_image_run_waits_in_the_queue_until_the_first_is_done(tmp_path: Path) -> None:
    env = {"KSEG_AUTOMATION_STATUS": "stopped"}  # only the two runs launched here
    with DagsterDev(tmp_path, env=env, image_runs=1, dequeue_seconds=5) as dev:
        pool = dev.graphql(POOL, {"pool": IMAGE_POOL})["instance"]
        assert pool["poolConfig"]["poolGranularity"] == "run"
        assert pool["concurrencyLimit"]["slotCount"] == 1  # set before the first pass
        overlap, seen_waiting, (first, second) = _two_runs(dev)
    assert not overlap, f"two image runs were active at once: {overlap}"
    assert second["startTime"] >= first["endTime"] - 0.5
    assert seen_waiting, "the second run was never seen queued behind the first"


def test_gap_open_the_first_queue_pass_ignores_a_new_pools_default_limit(tmp_path: Path) -> None:
    """Fails when Dagster applies the default limit in the pass that first meets a pool:
    then ``apply_pool_default`` in ``assets/dagster_gaps.py`` can go."""
    env = {"KSEG_AUTOMATION_STATUS": "stopped"}
    # A long queue interval, so the two launches land between the same two passes.
    with DagsterDev(tmp_path, env=env, image_runs=1, dequeue_seconds=30, prepared=False) as dev:
        overlap, _, _ = _two_runs(dev)
    assert overlap, "both runs waited their turn: the gap is closed upstream"
