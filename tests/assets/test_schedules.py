"""``resegmentation_schedule`` through ``build_schedule_context`` on a real instance and store."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest
from dagster_helpers import requested_partition_keys, run_job, write_image

from assets.automation import STATUS_ENV
from assets.definitions import build_defs
from assets.incoming import partition_key_for
from assets.names import IMAGE_ASSETS, PARTITIONS_NAME
from assets.schedules import (
    CRON_ENV,
    SCHEDULE_NAME,
    TIMEZONE_ENV,
    build_resegmentation_schedule,
    busy_partitions,
)
from assets.settings import ProjectSettings, update_own_settings
from assets.storage import KsegStorage
from pipeline.settings import SegmentSettings

resegmentation_schedule = build_resegmentation_schedule()

SELECTION = [dg.AssetKey(name) for name in IMAGE_ASSETS]
NIGHT = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)


def evaluate(
    schedule: dg.ScheduleDefinition, instance: dg.DagsterInstance, storage: KsegStorage
) -> dg.ScheduleExecutionData:
    # The context opens its own instance from the ref: close it (``with``), or Dagster's
    # current-instance context variable is left pointing at it after the test.
    with dg.build_schedule_context(
        instance=instance,
        instance_ref=instance.get_ref(),
        scheduled_execution_time=NIGHT,
        resources={"storage": storage, "settings": ProjectSettings(SegmentSettings())},
        repository_def=build_defs(storage).get_repository_def(),
    ) as context:
        return schedule.evaluate_tick(context)


def test_the_schedule_is_nightly_running_and_targets_segment_images() -> None:
    assert resegmentation_schedule.name == SCHEDULE_NAME
    assert resegmentation_schedule.cron_schedule == "0 2 * * *"
    assert resegmentation_schedule.execution_timezone == "UTC"
    assert resegmentation_schedule.job_name == "segment_images"
    assert resegmentation_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert build_defs().resolve_schedule_def(SCHEDULE_NAME).job_name == "segment_images"


def test_cron_time_zone_and_status_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(CRON_ENV, "*/15 * * * *")
    monkeypatch.setenv(TIMEZONE_ENV, "Europe/Paris")
    monkeypatch.setenv(STATUS_ENV, "stopped")
    schedule = build_resegmentation_schedule()
    assert schedule.cron_schedule == "*/15 * * * *"
    assert schedule.execution_timezone == "Europe/Paris"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert build_resegmentation_schedule(cron="0 3 * * 0").cron_schedule == "0 3 * * 0"
    monkeypatch.setenv(CRON_ENV, "every night")
    with pytest.raises(ValueError, match=CRON_ENV):
        build_resegmentation_schedule()


@pytest.mark.slow
def test_only_stale_missing_and_failed_images_are_requested(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path, tmp_path: Path
) -> None:
    fresh = write_image(incoming, "fresh.png", "astronaut")
    never = write_image(incoming, "never.png", "coffee")
    settings = write_image(incoming, "settings.png", "chelsea")
    own = write_image(incoming, "own.png", "immunohistochemistry")
    damaged = write_image(incoming, "damaged.png", "rocket")
    (incoming / "broken.png").write_bytes(b"not an image at all")
    broken = partition_key_for("broken.png")
    write_image(incoming, "unregistered.png", "camera")  # the sensor's business, not ours
    order = [fresh, never, settings, own, damaged, broken]
    instance.add_dynamic_partitions(PARTITIONS_NAME, order)
    assert run_job(instance, storage, [fresh]).success
    # Made under other project settings (they changed since): stale.
    assert run_job(instance, storage, [settings], settings=SegmentSettings(seed=7)).success
    # The image's own settings: never reverted by the schedule.
    project = ProjectSettings(SegmentSettings())
    update_own_settings(storage.store(), project, [own], {"seed": 7}, updated_by="test")
    assert run_job(instance, storage, [own]).success
    assert run_job(instance, storage, [damaged]).success
    (Path(storage.store_root) / "images" / damaged / "segment_stats.parquet").unlink()
    assert not run_job(instance, storage, [broken]).success  # a failed run

    data = evaluate(resegmentation_schedule, instance, storage)
    assert data.skip_message is None
    requests = list(data.run_requests or [])
    assert sorted(requested_partition_keys(instance, requests)) == sorted(
        [never, settings, damaged, broken]
    )
    for request in requests:
        assert request.asset_selection == SELECTION and not request.run_config
        assert request.tags["kseg/launched_by"] == SCHEDULE_NAME

    one_each = build_resegmentation_schedule(batch_size=1)
    requests = list(evaluate(one_each, instance, storage).run_requests or [])
    assert [r.partition_key for r in requests] == [never, settings, damaged, broken]
    assert all(r.tags["dagster/partition"] == r.partition_key for r in requests)

    # An image with a run in progress is left to that run.
    job = build_defs(storage).resolve_job_def("segment_images")
    instance.create_run_for_job(
        job, status=dg.DagsterRunStatus.STARTED, tags={"dagster/partition": never}
    )
    assert busy_partitions(instance, order) == {never}
    requests = list(evaluate(one_each, instance, storage).run_requests or [])
    assert [r.partition_key for r in requests] == [settings, damaged, broken]

    # Once they are segmented with the default settings, nothing is requested.
    for key in (never, settings, damaged):
        assert run_job(instance, storage, [key]).success
    (incoming / "broken.png").unlink()
    instance.delete_dynamic_partition(PARTITIONS_NAME, broken)
    data = evaluate(resegmentation_schedule, instance, storage)
    assert not data.run_requests
    assert "5 registered image(s)" in (data.skip_message or "")
    assert "1 busy" in (data.skip_message or "")


def test_an_up_to_date_folder_requests_nothing(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path
) -> None:
    key = write_image(incoming, "a.png", "astronaut")
    assert run_job(instance, storage, [key]).success
    data = evaluate(resegmentation_schedule, instance, storage)
    assert not data.run_requests
    assert "0 stale" in (data.skip_message or "") and "1 up to date" in (data.skip_message or "")


def test_a_missing_incoming_folder_is_a_skip(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path
) -> None:
    incoming.rmdir()
    data = evaluate(resegmentation_schedule, instance, storage)
    assert not data.run_requests and "does not exist" in (data.skip_message or "")


def test_busy_partitions_expands_partition_ranges(
    instance: dg.DagsterInstance, storage: KsegStorage
) -> None:
    order = ["a-0000000001", "b-0000000002", "c-0000000003", "d-0000000004"]
    instance.add_dynamic_partitions(PARTITIONS_NAME, order)
    job = build_defs(storage).resolve_job_def("segment_images")
    tags = {
        "dagster/asset_partition_range_start": order[1],
        "dagster/asset_partition_range_end": order[2],
    }
    instance.create_run_for_job(job, status=dg.DagsterRunStatus.STARTED, tags=tags)
    instance.create_run_for_job(
        job, status=dg.DagsterRunStatus.SUCCESS, tags={"dagster/partition": order[3]}
    )
    assert busy_partitions(instance, order) == {order[1], order[2]}
