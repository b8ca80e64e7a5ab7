"""``incoming_images_sensor`` through ``build_sensor_context``, on a real folder and instance.

Each tick goes through ``SensorDefinition.evaluate_tick`` (the daemon's own entry
point), then its partition requests and asset events are applied to the instance and
its cursor committed, as the daemon does.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
from daemon_driver import DaemonDriver
from dagster_helpers import run_job, write_image

import assets.changes as changes
from assets.automation import STATUS_ENV
from assets.definitions import build_defs
from assets.incoming import partition_key_for
from assets.names import PARTITIONS_NAME, REPORT, SETTINGS, SOURCE
from assets.sensors import (
    INTERVAL_ENV,
    SENSOR_NAME,
    SensorSettings,
    build_failed_batch_sensor,
    build_incoming_images_sensor,
    split_requests,
)
from assets.settings import ProjectSettings, update_own_settings
from assets.storage import KsegStorage
from pipeline.settings import SegmentSettings

OLD = 120.0  # seconds: files older than this have settled


def put(folder: Path, relpath: str, data: bytes = b"\x89PNG fake", *, age: float = OLD) -> str:
    """Write ``data`` at ``folder/relpath`` with an mtime ``age`` seconds ago; return its key."""
    path = folder / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return partition_key_for(relpath)


def Driver(
    instance: dg.DagsterInstance,
    storage: KsegStorage,
    settings: SensorSettings,
    project: ProjectSettings | None = None,
) -> DaemonDriver:
    """Ticks the sensor like the daemon: evaluate, apply requests and events, commit."""
    return DaemonDriver(instance, storage, settings, project)


def observed(data: dg.SensorExecutionData, asset: str) -> dict[str, str]:
    """partition -> data version, of the tick's observations of ``asset``."""
    return {
        e.partition: e.tags["dagster/data_version"]
        for e in data.asset_events or []
        if e.asset_key == dg.AssetKey(asset)
    }


@pytest.fixture
def driver(instance: dg.DagsterInstance, storage: KsegStorage) -> Driver:
    return Driver(instance, storage, SensorSettings())


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files the survey reads and hashes."""
    read: list[str] = []
    real = changes.sha256_file

    def counting(path: Path, **bounds) -> str:
        read.append(path.name)
        return real(path, **bounds)

    monkeypatch.setattr(changes, "sha256_file", counting)
    return read


# -- the definition ---------------------------------------------------------------------------
def test_the_sensor_runs_by_default_and_requests_no_segmentation_itself() -> None:
    sensor = build_incoming_images_sensor()
    assert sensor.name == SENSOR_NAME
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 30
    assert build_defs().resolve_sensor_def(SENSOR_NAME).name == SENSOR_NAME


def test_interval_and_status_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INTERVAL_ENV, "5")
    monkeypatch.setenv(STATUS_ENV, "stopped")
    sensor = build_incoming_images_sensor()
    assert sensor.minimum_interval_seconds == 5
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED


def test_settings_from_the_environment() -> None:
    settings = SensorSettings.from_env(
        {
            "KSEG_SENSOR_SETTLE_SECONDS": "0.5",
            "KSEG_SENSOR_MAX_FILES": "7",
            "KSEG_SENSOR_TIME_BUDGET_SECONDS": "3",
        }
    )
    assert (settings.settle_seconds, settings.max_files, settings.time_budget) == (0.5, 7, 3.0)
    for name, value in (("KSEG_SENSOR_MAX_FILES", "0"), ("KSEG_SENSOR_SETTLE_SECONDS", "-1")):
        with pytest.raises(ValueError, match=name):
            SensorSettings.from_env({name: value})


# -- new, unchanged, changed ------------------------------------------------------------------
def test_new_images_get_a_partition_and_their_sources_are_observed(
    driver: Driver, incoming: Path
) -> None:
    a = put(incoming, "a.png", b"a")
    b = put(incoming, "cats/deep/b.jpg", b"b")
    data, report = driver.tick()
    assert sorted(driver.partitions()) == sorted([a, b])
    assert not data.run_requests  # automation segments them, from these observations
    import hashlib

    assert observed(data, SOURCE) == {
        a: hashlib.sha256(b"a").hexdigest(),
        b: hashlib.sha256(b"b").hexdigest(),
    }
    assert set(observed(data, SETTINGS)) == {a, b}
    assert len(set(observed(data, SETTINGS).values())) == 1  # the same, project settings
    assert report.survey.new == sorted([a, b]) or set(report.survey.new) == {a, b}


def test_unchanged_files_record_nothing_and_are_not_read_again(
    driver: Driver, incoming: Path, hashes: list[str]
) -> None:
    put(incoming, "a.png", b"a")
    driver.tick()
    assert hashes == ["a.png"]
    for _ in range(3):
        data, _report = driver.tick()
        assert not data.asset_events and not data.dynamic_partitions_requests
        assert data.skip_message
    assert hashes == ["a.png"]


def test_changed_bytes_are_observed_and_a_touch_only_updates_the_look(
    driver: Driver, incoming: Path, hashes: list[str]
) -> None:
    a = put(incoming, "a.png", b"a")
    first, _ = driver.tick()
    put(incoming, "a.png", b"A", age=60)
    changed, report = driver.tick()
    assert observed(changed, SOURCE)[a] != observed(first, SOURCE)[a]
    assert report.survey.changed == [a]
    put(incoming, "a.png", b"A", age=30)  # same bytes, new time
    touched, report = driver.tick()
    assert observed(touched, SOURCE) == {a: observed(changed, SOURCE)[a]}  # same version
    assert report.survey.changed == []
    driver.tick()
    assert hashes.count("a.png") == 3  # never again once the new time is recorded
    put(incoming, "a.png", b"a", age=10)  # back to the first bytes: a new version again
    back, _ = driver.tick()
    assert observed(back, SOURCE) == {a: observed(first, SOURCE)[a]}


def test_a_file_still_being_written_waits_until_it_is_stable(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path
) -> None:
    driver = Driver(instance, storage, SensorSettings(settle_seconds=60))
    a = put(incoming, "a.png", b"half", age=1)
    data, report = driver.tick()
    assert report.survey.waiting == [a] and not driver.partitions()
    put(incoming, "a.png", b"whole", age=OLD)
    data, report = driver.tick()
    assert driver.partitions() == [a] and a in observed(data, SOURCE)


def test_temporary_names_and_dot_files_are_never_taken_until_renamed(
    driver: Driver, incoming: Path
) -> None:
    for name in ("up.png.part", ".hidden.png", "~lock.png", "x.png.tmp", ".dir/a.png"):
        put(incoming, name)
    driver.tick()
    assert driver.partitions() == []
    (incoming / "up.png.part").rename(incoming / "up.png")
    driver.tick()
    assert driver.partitions() == [partition_key_for("up.png")]


def test_an_images_own_settings_are_observed_when_they_change(
    driver: Driver, incoming: Path, storage: KsegStorage
) -> None:
    a = put(incoming, "a.png", b"a")
    b = put(incoming, "b.png", b"b")
    first, _ = driver.tick()
    update_own_settings(storage.store(), driver.project, [a], {"k_override": 6}, updated_by="t")
    data, _ = driver.tick()
    assert set(observed(data, SETTINGS)) == {a}
    assert observed(data, SETTINGS)[a] != observed(first, SETTINGS)[a]
    assert not observed(data, SOURCE)
    assert b not in observed(data, SETTINGS)


def test_a_project_settings_change_is_observed_for_exactly_the_images_it_changes(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path
) -> None:
    a = put(incoming, "a.png", b"a")
    b = put(incoming, "b.png", b"b")
    project = ProjectSettings(SegmentSettings())
    update_own_settings(storage.store(), project, [a], {"seed": 3}, updated_by="t")
    Driver(instance, storage, SensorSettings(), project).tick()
    later = Driver(instance, storage, SensorSettings(), ProjectSettings(SegmentSettings(seed=3)))
    data, _ = later.tick()
    assert set(observed(data, SETTINGS)) == {b}  # a's own seed already was 3


def test_unusable_own_settings_are_reported_and_the_image_is_left_alone(
    driver: Driver, incoming: Path, storage: KsegStorage
) -> None:
    a = put(incoming, "a.png", b"a")
    b = put(incoming, "b.png", b"b")
    storage.store().save_own_settings(a, b"{not json")
    data, report = driver.tick()
    assert set(observed(data, SOURCE)) == {b}
    assert any(
        "a.png" in line and "not a JSON settings document" in line for line in report.skipped_new
    )


# -- deleted ----------------------------------------------------------------------------------
def test_a_deleted_image_loses_its_partition_its_outputs_go_to_the_trash_and_the_report_follows(
    driver: Driver, instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path
) -> None:
    a = write_image(incoming, "a.png")
    b = write_image(incoming, "b.png", "coffee")
    driver.tick()
    assert run_job(instance, storage, [a, b]).success
    update_own_settings(storage.store(), driver.project, [a], {"k_override": 4}, updated_by="t")
    (incoming / "a.png").unlink()
    data, report = driver.tick()
    assert driver.partitions() == [b]
    assert report.deleted == [a]
    trash = Path(report.trashed[a])
    assert (trash / "outputs" / "raw_image.png").is_file()
    assert (trash / "settings.json").is_file() and (trash / "trashed.json").is_file()
    assert not (Path(storage.store_root) / "images" / a).exists()
    assert [r.asset_selection for r in data.run_requests] == [[dg.AssetKey(REPORT)]]
    # The report then covers exactly the registered images, and its check passes.
    result = run_job(instance, storage, [], job="segmentation_report_job")
    meta = next(iter(result.asset_materializations_for_node(REPORT))).metadata
    assert meta["images"].value == 1
    check = result.get_asset_check_evaluations()[0]
    assert check.passed


def test_a_deleted_image_without_outputs_just_loses_its_partition(
    driver: Driver, incoming: Path
) -> None:
    a = put(incoming, "a.png")
    driver.tick()
    (incoming / "a.png").unlink()
    _, report = driver.tick()
    assert driver.partitions() == [] and report.deleted == [a] and not report.trashed


def test_outputs_are_not_moved_while_a_run_holds_the_image(
    driver: Driver, incoming: Path, storage: KsegStorage
) -> None:
    a = put(incoming, "a.png")
    driver.tick()
    store = storage.store()
    store.save(a, "raw_image", cache_key="k", code_version="1", files={"raw_image.png": b"x"})
    (incoming / "a.png").unlink()
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store.lock(a):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(10)
    try:
        _, report = driver.tick()
        assert report.deferred_deletions == [a] and driver.partitions() == [a]
    finally:
        release.set()
        thread.join()
    _, report = driver.tick()
    assert report.deleted == [a] and driver.partitions() == []


def test_a_missing_incoming_folder_removes_nothing(driver: Driver, incoming: Path) -> None:
    a = put(incoming, "a.png")
    driver.tick()
    for path in sorted(incoming.rglob("*"), reverse=True):
        path.unlink()
    incoming.rmdir()
    data, _ = driver.tick()
    assert driver.partitions() == [a] and "does not exist" in data.skip_message


def test_keys_no_kseg_file_can_have_are_removed(
    driver: Driver, instance: dg.DagsterInstance, incoming: Path
) -> None:
    good = put(incoming, "a.png")
    instance.add_dynamic_partitions(PARTITIONS_NAME, ["../../etc", "x" * 300, "/etc/passwd"])
    driver.tick()
    assert driver.partitions() == [good]


# -- skipped files ----------------------------------------------------------------------------
def test_an_unreadable_file_is_reported_once_and_never_taken_for_deleted(
    driver: Driver, incoming: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = put(incoming, "a.png", b"a")
    driver.tick()
    put(incoming, "b.png", b"b")
    real_sha, real_look = changes.sha256_file, changes.look

    def refuse_b(path: Path, **bounds) -> str:
        if path.name == "b.png":
            raise PermissionError(13, "Permission denied")
        return real_sha(path, **bounds)

    def refuse_a(path: Path):
        if path.name == "a.png":
            raise PermissionError(13, "Permission denied")
        return real_look(path)

    monkeypatch.setattr(changes, "sha256_file", refuse_b)
    monkeypatch.setattr(changes, "look", refuse_a)
    _, report = driver.tick()
    assert report.deleted == [] and driver.partitions() == [a]
    assert report.skipped_new == [
        "a.png (cannot be read: Permission denied)",
        "b.png (cannot be read: Permission denied)",
    ]
    _, report = driver.tick()
    assert report.skipped_new == []
    monkeypatch.undo()
    _, report = driver.tick()
    assert report.added == [partition_key_for("b.png")]


def test_unsupported_files_are_reported_once(driver: Driver, incoming: Path) -> None:
    put(incoming, "a.png")
    put(incoming, "notes.txt")
    put(incoming, "sub/data.csv")
    _, report = driver.tick()
    assert report.skipped_new == [
        "notes.txt (unsupported file type)",
        "sub/data.csv (unsupported file type)",
    ]
    for _ in range(2):
        _, report = driver.tick()
        assert report.skipped_new == []
    put(incoming, "sub/more.docx")
    _, report = driver.tick()
    assert report.skipped_new == ["sub/more.docx (unsupported file type)"]
    assert driver.partitions() == [partition_key_for("a.png")]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_links_leading_outside_are_reported_once_and_never_read(
    driver: Driver, incoming: Path, tmp_path: Path, hashes: list[str]
) -> None:
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"secret")
    (incoming / "link.png").symlink_to(outside)
    _, report = driver.tick()
    assert driver.partitions() == [] and hashes == []
    assert report.skipped_new == ["link.png (symbolic link leads outside the incoming folder)"]
    _, report = driver.tick()
    assert report.skipped_new == []


# -- scale ------------------------------------------------------------------------------------
def test_the_cursor_stays_small(driver: Driver, incoming: Path) -> None:
    for i in range(300):
        put(incoming, f"{i}.png", bytes([i % 256, i // 256]))
    driver.tick()
    assert len(driver.partitions()) == 300
    assert len(driver.cursor or "") < 200


@pytest.mark.slow
def test_a_thousand_new_files_are_taken_a_bounded_number_per_tick(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path
) -> None:
    # (Each observation is one event write in Dagster's SQLite storage, about 10 ms here:
    # benchmarks/bench_sensor.py measures 10,000 files.)
    driver = Driver(instance, storage, SensorSettings(max_files=250))
    stamp = time.time() - OLD
    keys = []
    for i in range(1000):
        folder = incoming / f"d{i // 100:03d}"
        folder.mkdir(exist_ok=True)
        path = folder / f"{i}.png"
        path.write_bytes(i.to_bytes(4, "big"))
        os.utime(path, (stamp, stamp))
        keys.append(partition_key_for(f"d{i // 100:03d}/{i}.png"))
    added: list[str] = []
    ticks = 0
    while ticks < 10:
        _, report = driver.tick()
        ticks += 1
        assert report.survey.hashed <= 250
        added += report.added
        if not report.added:
            break
    assert ticks == 5  # 4 ticks of 250 files, then nothing new
    assert sorted(added) == sorted(keys) and sorted(driver.partitions()) == sorted(keys)
    _, report = driver.tick()
    assert report.survey.hashed == 0 and not report.survey.events


# -- failed batches ---------------------------------------------------------------------------
def test_a_failed_batch_is_split_into_one_run_per_image_and_single_runs_are_not(
    instance: dg.DagsterInstance, storage: KsegStorage
) -> None:
    order = ["a-0000000001", "b-0000000002", "c-0000000003"]
    instance.add_dynamic_partitions(PARTITIONS_NAME, order)
    job = build_defs(storage).resolve_job_def("segment_images")
    tags = {
        "dagster/asset_partition_range_start": order[0],
        "dagster/asset_partition_range_end": order[2],
    }
    batch = instance.create_run_for_job(job, status=dg.DagsterRunStatus.FAILURE, tags=tags)
    requests = split_requests(batch, order)
    assert [r.partition_key for r in requests] == order
    assert len({r.run_key for r in requests}) == 3
    assert next(k.path[-1] for k in requests[0].asset_selection) == "raw_image"
    single = instance.create_run_for_job(
        job, status=dg.DagsterRunStatus.FAILURE, tags={"dagster/partition": order[0]}
    )
    assert split_requests(single, order) == []
    assert build_failed_batch_sensor().name == "failed_batch_sensor"
