"""The memory budget live: runs of images beyond the instance's limit wait in the queue.

A real ``dagster dev`` on an instance whose budget is one run of per-image steps at a
time (``concurrency.pools`` at run granularity, pool ``kseg_images``). Two images are
registered and two runs launched at once over GraphQL, as the UI launches them: the
second must stay queued until the first has finished, and both must succeed.
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


def test_a_second_image_run_waits_in_the_queue_until_the_first_is_done(tmp_path: Path) -> None:
    env = {"KSEG_AUTOMATION_STATUS": "stopped"}  # only the two runs launched here
    with DagsterDev(tmp_path, env=env, image_runs=1) as dev:
        pool = dev.graphql(POOL, {"pool": IMAGE_POOL})["instance"]
        assert pool["poolConfig"]["poolGranularity"] == "run"
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
        assert not overlap, f"two image runs were active at once: {overlap}"
        assert [done[run_id]["status"] for run_id in run_ids] == ["SUCCESS", "SUCCESS"]
        first, second = sorted(done.values(), key=lambda run: run["startTime"])
        assert second["startTime"] >= first["endTime"] - 0.5
        assert seen_waiting, "the second run was never seen queued behind the first"
        for key in keys:
            assert (dev.store / "images" / key / "region_stats.parquet").is_file()
