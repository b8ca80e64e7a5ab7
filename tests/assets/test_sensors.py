"""``incoming_images_sensor`` through ``build_sensor_context``, on a real folder and instance.

Each tick goes through ``SensorDefinition.evaluate_tick`` (the daemon's own entry
point: run requests resolved and validated against the partitions), then the
partition requests are applied to the instance and the cursor committed, as the
daemon does.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster_helpers import QUIET, materializations, requested_partition_keys, write_image

from assets.automation import STATUS_ENV
from assets.definitions import build_defs
from assets.incoming import partition_key_for
from assets.keys import IMAGE_ASSETS, PARTITIONS_NAME, SOURCE
from assets.provenance import observation
from assets.sensors import (
    INTERVAL_ENV,
    SENSOR_NAME,
    FileStateStore,
    SensorCursor,
    SensorSettings,
    TickReport,
    build_incoming_images_sensor,
    evaluate_incoming,
    incoming_images_sensor,
    unsupported_files,
)
from assets.storage import KsegStorage

SELECTION = [dg.AssetKey(name) for name in IMAGE_ASSETS]
OLD = 120.0  # seconds: files older than this have settled


def put(folder: Path, relpath: str, data: bytes = b"\x89PNG fake", *, age: float = OLD) -> str:
    """Write ``data`` at ``folder/relpath`` with an mtime ``age`` seconds ago; return its key."""
    path = folder / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return partition_key_for(relpath)


class Driver:
    """Ticks a sensor like the daemon: evaluate, apply partition requests, commit the cursor."""

    def __init__(
        self, instance: dg.DagsterInstance, storage: KsegStorage, settings: SensorSettings
    ) -> None:
        self.instance = instance
        self.storage = storage
        self.settings = settings
        self.defs = build_defs(storage)
        self.cursor: str | None = None
        self.reports: list[TickReport] = []
        reports = self.reports

        @dg.sensor(name=SENSOR_NAME, job_name="segment_images")
        def probe(context: dg.SensorEvaluationContext, storage: KsegStorage) -> dg.SensorResult:
            result, report = evaluate_incoming(context, storage, settings)
            reports.append(report)
            return result

        self.sensor = probe

    def context(self, cursor: str | None) -> dg.SensorEvaluationContext:
        return dg.build_sensor_context(
            instance=self.instance,
            instance_ref=self.instance.get_ref(),
            cursor=cursor,
            definitions=self.defs,
            resources={"storage": self.storage},
        )

    def tick(self, *, commit: bool = True) -> tuple[list[dg.RunRequest], TickReport]:
        with self.context(self.cursor) as context:
            data = self.sensor.evaluate_tick(context)
        for request in data.dynamic_partitions_requests or []:
            if isinstance(request, dg.AddDynamicPartitionsRequest):
                self.instance.add_dynamic_partitions(
                    request.partitions_def_name, list(request.partition_keys)
                )
            else:
                for key in request.partition_keys:
                    self.instance.delete_dynamic_partition(request.partitions_def_name, key)
        if commit:
            self.cursor = data.cursor
        return list(data.run_requests or []), self.reports[-1]

    def partitions(self) -> list[str]:
        return list(self.instance.get_dynamic_partitions(PARTITIONS_NAME))

    def requested_keys(self, requests: list[dg.RunRequest]) -> list[str]:
        """Partition keys covered by ``requests`` (single partitions and ranges)."""
        return requested_partition_keys(self.instance, requests)


@pytest.fixture
def driver(instance: dg.DagsterInstance, storage: KsegStorage) -> Driver:
    return Driver(instance, storage, SensorSettings())


# -- the definition ---------------------------------------------------------------------------
def test_the_sensor_runs_by_default_and_targets_segment_images() -> None:
    assert incoming_images_sensor.name == SENSOR_NAME
    assert incoming_images_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert incoming_images_sensor.job_name == "segment_images"
    assert incoming_images_sensor.minimum_interval_seconds == 30
    defs = build_defs()
    assert defs.resolve_sensor_def(SENSOR_NAME).default_status == dg.DefaultSensorStatus.RUNNING


def test_interval_and_status_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INTERVAL_ENV, "5")
    monkeypatch.setenv(STATUS_ENV, "stopped")
    sensor = build_incoming_images_sensor()
    assert sensor.minimum_interval_seconds == 5
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    monkeypatch.setenv(INTERVAL_ENV, "soon")
    with pytest.raises(ValueError, match=INTERVAL_ENV):
        build_incoming_images_sensor()


def test_settings_from_the_environment() -> None:
    settings = SensorSettings.from_env(
        {
            "KSEG_SENSOR_SETTLE_SECONDS": "0.5",
            "KSEG_SENSOR_MAX_RUNS": "3",
            "KSEG_SENSOR_BATCH_SIZE": "7",
            "KSEG_SENSOR_TIME_BUDGET_SECONDS": "4",
        }
    )
    assert (settings.settle_seconds, settings.max_runs, settings.batch_size) == (0.5, 3, 7)
    assert settings.time_budget == 4 and settings.max_images == 21
    assert SensorSettings.from_env({}) == SensorSettings()
    with pytest.raises(ValueError, match="KSEG_SENSOR_SETTLE_SECONDS"):
        SensorSettings.from_env({"KSEG_SENSOR_SETTLE_SECONDS": "-1"})
    with pytest.raises(ValueError, match="KSEG_SENSOR_MAX_RUNS"):
        SensorSettings.from_env({"KSEG_SENSOR_MAX_RUNS": "0"})


# -- new, unchanged, changed ------------------------------------------------------------------
def test_new_images_in_subfolders_get_a_partition_and_a_run(driver: Driver, incoming: Path) -> None:
    a = put(incoming, "a.png", b"one")
    b = put(incoming, "trip/day 1/b.JPG", b"two")
    requests, report = driver.tick()
    assert sorted(report.new) == sorted([a, b]) and report.hashed == 2
    assert driver.partitions() == [a, b]
    assert sorted(r.partition_key for r in requests) == sorted([a, b])
    for request in requests:
        assert request.asset_selection == SELECTION
        assert not request.run_config  # the job's default config
        assert request.tags["dagster/partition"] == request.partition_key
        assert request.tags["dagster/sensor_name"] == SENSOR_NAME
        assert request.run_key.startswith(f"{request.partition_key}:")


def test_unchanged_files_request_nothing_and_are_not_read_again(
    driver: Driver, incoming: Path
) -> None:
    put(incoming, "a.png", b"one")
    put(incoming, "sub/b.png", b"two")
    driver.tick()
    for _ in range(2):
        requests, report = driver.tick()
        assert requests == []
        assert report.hashed == 0 and report.unchanged == 2
        assert not report.new and not report.changed and not report.deleted


def test_changed_bytes_request_a_run_and_a_touch_does_not(driver: Driver, incoming: Path) -> None:
    a = put(incoming, "a.png", b"one")
    put(incoming, "b.png", b"two")
    first, _ = driver.tick()
    put(incoming, "a.png", b"one, edited", age=60)
    requests, report = driver.tick()
    assert report.changed == [a] and not report.new
    assert [r.partition_key for r in requests] == [a]
    assert requests[0].run_key not in {r.run_key for r in first}
    put(incoming, "b.png", b"two", age=30)  # same bytes, new mtime
    requests, report = driver.tick()
    assert requests == [] and report.touched == 1 and report.hashed == 1
    requests, report = driver.tick()
    assert requests == [] and report.hashed == 0


def test_bytes_changed_back_are_segmented_again(driver: Driver, incoming: Path) -> None:
    key = put(incoming, "a.png", b"first", age=300)
    keys = [driver.tick()[0][0].run_key]
    put(incoming, "a.png", b"second", age=200)
    keys.append(driver.tick()[0][0].run_key)
    put(incoming, "a.png", b"first", age=100)
    requests, report = driver.tick()
    assert report.changed == [key]
    keys.append(requests[0].run_key)
    assert len(set(keys)) == 3


def test_images_whose_bytes_a_run_already_read_need_no_request(
    driver: Driver, incoming: Path
) -> None:
    seen = put(incoming, "seen.png", b"segmented by kseg run")
    edited = put(incoming, "edited.png", b"edited since")
    driver.instance.add_dynamic_partitions(PARTITIONS_NAME, [seen, edited])
    for key, data in ((seen, b"segmented by kseg run"), (edited, b"before the edit")):
        driver.instance.report_runless_asset_event(
            observation(
                asset_key=dg.AssetKey(SOURCE),
                partition=key,
                data_version=hashlib.sha256(data).hexdigest(),
                metadata={},
            )
        )
    requests, report = driver.tick()
    assert [r.partition_key for r in requests] == [edited]
    assert report.adopted == 1 and report.new == [edited]
    requests, report = driver.tick()
    assert requests == [] and report.unchanged == 2


# -- deleted ----------------------------------------------------------------------------------
def test_a_deleted_image_loses_its_partition_and_its_outputs_go_to_the_trash(
    driver: Driver, incoming: Path, storage: KsegStorage
) -> None:
    a = put(incoming, "keep.png", b"keep")
    b = put(incoming, "old/gone.png", b"gone")
    driver.tick()
    store = Path(storage.store_root)
    for key in (a, b):
        (store / "images" / key).mkdir(parents=True)
        (store / "images" / key / "raw_image.png").write_bytes(key.encode())
    (incoming / "old" / "gone.png").unlink()
    requests, report = driver.tick()
    assert requests == [] and report.deleted == [b]
    assert driver.partitions() == [a]
    assert not (store / "images" / b).exists()
    assert (store / "images" / a / "raw_image.png").read_bytes() == a.encode()
    (trashed,) = (store / "trash").iterdir()
    assert trashed.name.endswith(f"-{b}") and report.trashed == {b: str(trashed)}
    assert (trashed / "raw_image.png").read_bytes() == b.encode()
    note = json.loads((trashed / "trashed.json").read_text())
    assert note["partition_key"] == b and note["source_path"] == "old/gone.png"
    requests, report = driver.tick()
    assert requests == [] and report.deleted == [] and driver.partitions() == [a]
    assert b not in FileStateStore(driver.instance).load()


def test_a_deleted_image_without_outputs_just_loses_its_partition(
    driver: Driver, incoming: Path, storage: KsegStorage
) -> None:
    key = put(incoming, "a.png")
    driver.tick()
    (incoming / "a.png").unlink()
    _, report = driver.tick()
    assert report.deleted == [key] and report.trashed == {} and driver.partitions() == []
    assert not (Path(storage.store_root) / "trash").exists()


def test_outputs_are_not_moved_while_a_run_holds_the_image(
    driver: Driver, incoming: Path, storage: KsegStorage
) -> None:
    key = put(incoming, "a.png")
    driver.tick()
    (Path(storage.store_root) / "images" / key).mkdir(parents=True)
    (incoming / "a.png").unlink()
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with storage.store().lock(key):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        _, report = driver.tick()
        assert report.deleted == [] and report.deferred == 1 and driver.partitions() == [key]
    finally:
        release.set()
        holder.join()
    _, report = driver.tick()
    assert report.deleted == [key] and key in report.trashed and driver.partitions() == []


def test_a_missing_incoming_folder_removes_nothing(
    driver: Driver, incoming: Path, tmp_path: Path
) -> None:
    key = put(incoming, "a.png")
    driver.tick()
    incoming.rename(tmp_path / "unmounted")
    requests, _ = driver.tick()
    assert requests == [] and driver.partitions() == [key]


def test_a_partition_removed_elsewhere_is_added_back(driver: Driver, incoming: Path) -> None:
    key = put(incoming, "a.png")
    driver.tick()
    driver.instance.delete_dynamic_partition(PARTITIONS_NAME, key)
    requests, report = driver.tick()
    assert report.new == [key] and [r.partition_key for r in requests] == [key]
    assert driver.partitions() == [key]


# -- files still being written ----------------------------------------------------------------
def test_a_file_still_being_written_waits_until_it_is_stable(
    driver: Driver, incoming: Path
) -> None:
    path = incoming / "big.png"
    path.write_bytes(b"first half")  # modified just now
    requests, report = driver.tick()
    assert requests == [] and report.settling == 1 and driver.partitions() == []
    with path.open("ab") as stream:
        stream.write(b", second half")
    requests, report = driver.tick()
    assert requests == [] and report.settling == 1 and report.hashed == 0
    requests, report = driver.tick()  # same size and mtime as the last look: stable
    assert [r.partition_key for r in requests] == [partition_key_for("big.png")]
    assert report.new == [partition_key_for("big.png")] and report.settling == 0


def test_a_quiet_file_is_taken_at_first_sight(instance, storage, incoming: Path) -> None:
    driver = Driver(instance, storage, SensorSettings(settle_seconds=0))
    (incoming / "now.png").write_bytes(b"done")
    requests, report = driver.tick()
    assert len(requests) == 1 and report.settling == 0


def test_temporary_names_and_dot_files_are_never_taken_until_renamed(
    driver: Driver, incoming: Path
) -> None:
    put(incoming, "upload.png.part", b"partial")
    put(incoming, "copy.jpg.tmp", b"partial")
    put(incoming, ".hidden.png", b"hidden")
    put(incoming, "~lock.png", b"lock")
    put(incoming, ".cache/inside.png", b"hidden folder")
    for _ in range(2):
        requests, report = driver.tick()
        assert requests == [] and report.images == 0 and report.skipped_new == []
    os.rename(incoming / "upload.png.part", incoming / "upload.png")  # keeps its old mtime
    requests, report = driver.tick()
    assert [r.partition_key for r in requests] == [partition_key_for("upload.png")]


def test_an_unreadable_file_is_reported_once_and_never_taken_for_deleted(
    driver: Driver, incoming: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import assets.sensors as sensors

    a = put(incoming, "a.png", b"a")
    driver.tick()
    put(incoming, "b.png", b"b")
    real_sha, real_look = sensors._sha256_file, sensors._look

    def refuse_b(path: Path) -> str:
        if path.name == "b.png":
            raise PermissionError(13, "Permission denied")
        return real_sha(path)

    def refuse_a(path: Path) -> tuple[int, int] | None:
        if path.name == "a.png":
            raise PermissionError(13, "Permission denied")
        return real_look(path)

    monkeypatch.setattr(sensors, "_sha256_file", refuse_b)
    monkeypatch.setattr(sensors, "_look", refuse_a)
    requests, report = driver.tick()
    assert requests == [] and report.deleted == [] and driver.partitions() == [a]
    assert report.skipped_new == [
        "a.png (cannot be read: Permission denied)",
        "b.png (cannot be read: Permission denied)",
    ]
    requests, report = driver.tick()
    assert requests == [] and report.skipped_new == [] and len(report.unreadable) == 2
    monkeypatch.undo()
    requests, report = driver.tick()
    assert report.new == [partition_key_for("b.png")] and report.unchanged == 1


# -- skipped files ----------------------------------------------------------------------------
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
    driver: Driver, incoming: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"secret")
    (incoming / "link.png").symlink_to(outside)
    requests, report = driver.tick()
    assert requests == [] and report.images == 0
    assert report.skipped_new == ["link.png (symbolic link leads outside the incoming folder)"]
    _, report = driver.tick()
    assert report.skipped_new == []


def test_unsupported_files_follows_the_scan_rules(incoming: Path) -> None:
    put(incoming, "a.png")
    put(incoming, "b.txt")
    put(incoming, "b.txt.part")
    put(incoming, ".DS_Store")
    put(incoming, ".git/config")
    put(incoming, "deep/er/c.pdf")
    assert unsupported_files(incoming) == ["b.txt", "deep/er/c.pdf"]


# -- cursor, state, run keys ------------------------------------------------------------------
def test_cursor_round_trip() -> None:
    cursor = SensorCursor(epoch="0a1b2c3d", seq=41, skipped="ffee")
    assert SensorCursor.parse(cursor.to_json()) == cursor
    for text in (None, "", "not json", '{"v": 2}', '{"v": 1, "epoch": 3, "seq": 1}'):
        fresh = SensorCursor.parse(text)
        assert fresh.seq == 0 and fresh.skipped == "" and len(fresh.epoch) == 8
    assert SensorCursor.parse(None).epoch != SensorCursor.parse(None).epoch


def test_the_cursor_stays_small_and_the_per_file_state_lives_in_the_instance(
    driver: Driver, incoming: Path
) -> None:
    keys = [put(incoming, f"f{i:03d}.png", bytes([i])) for i in range(200)]
    driver.tick()
    small = driver.cursor
    assert small is not None and len(small) < 120
    assert not any(key in small for key in keys)
    state = FileStateStore(driver.instance).load()
    assert sorted(state) == sorted(keys)
    assert state[keys[0]].relpath == "f000.png" and len(state[keys[0]].sha256) == 64
    driver.tick()
    assert len(driver.cursor or "") == len(small)


def test_an_uncommitted_tick_is_repeated_with_the_same_run_keys(
    driver: Driver, incoming: Path
) -> None:
    put(incoming, "a.png", b"a")
    put(incoming, "b.png", b"b")
    lost, _ = driver.tick(commit=False)  # e.g. the evaluation timed out
    again, report = driver.tick()
    assert sorted(r.run_key for r in again) == sorted(r.run_key for r in lost)
    assert report.hashed == 0  # the bytes were already known
    assert report.repeated == 2 and not report.new and not report.changed
    requests, _ = driver.tick()
    assert requests == []


def test_a_reset_cursor_requests_every_image_again_with_the_same_run_keys(
    driver: Driver, incoming: Path
) -> None:
    put(incoming, "a.png", b"a")
    put(incoming, "b.png", b"b")
    first, _ = driver.tick()
    driver.cursor = None  # "Reset cursor" in the UI
    again, _ = driver.tick()
    assert sorted(r.run_key for r in again) == sorted(r.run_key for r in first)
    assert driver.tick()[0] == []


# -- bounded ticks ----------------------------------------------------------------------------
def _many_files(folder: Path, count: int) -> list[str]:
    stamp = time.time() - OLD
    keys = []
    for i in range(count):
        sub = folder / f"batch{i // 500:02d}"
        if i % 500 == 0:
            sub.mkdir()
        path = sub / f"img{i:05d}.png"
        path.write_bytes(i.to_bytes(4, "little"))
        os.utime(path, (stamp, stamp))
        keys.append(partition_key_for(f"batch{i // 500:02d}/img{i:05d}.png"))
    return keys


def test_ten_thousand_new_files_are_taken_a_bounded_number_per_tick(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path
) -> None:
    settings = SensorSettings(max_runs=10, batch_size=250)
    driver = Driver(instance, storage, settings)
    keys = _many_files(incoming, 10_000)
    seen: list[str] = []
    ticks = 0
    while True:
        requests, report = driver.tick()
        ticks += 1
        if not requests:
            break
        assert len(requests) <= settings.max_runs
        covered = driver.requested_keys(requests)
        assert len(covered) <= settings.max_images and report.hashed <= settings.max_images
        assert len(covered) == len(report.new)
        seen += covered
        assert len(driver.cursor or "") < 120
        assert ticks < 10, "the backlog must shrink every tick"
    assert ticks == 5  # 4 ticks of 2,500 images, then nothing
    assert sorted(seen) == sorted(keys)  # every image requested exactly once
    assert sorted(driver.partitions()) == sorted(keys)
    assert report.unchanged == 10_000 and report.hashed == 0


def test_a_burst_is_batched_into_at_most_max_runs_ranges(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path
) -> None:
    driver = Driver(instance, storage, SensorSettings(max_runs=2, batch_size=3))
    keys = [put(incoming, f"{i}.png", bytes([i])) for i in range(8)]
    requests, report = driver.tick()
    assert len(requests) == 2 and report.deferred == 2 and report.hashed == 6
    assert all(r.partition_key is None for r in requests)
    assert all(r.run_key.startswith("batch:") for r in requests)
    assert driver.requested_keys(requests) == keys[:6] and driver.partitions() == keys[:6]
    requests, report = driver.tick()
    assert [r.partition_key for r in requests] == keys[6:] and report.hashed == 2


# -- the requested runs work ------------------------------------------------------------------
def _execute(driver: Driver, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    job = driver.defs.resolve_job_def("segment_images")
    return job.execute_in_process(
        run_config=QUIET,
        instance=driver.instance,
        partition_key=request.partition_key,
        asset_selection=request.asset_selection,
        tags={k: v for k, v in request.tags.items() if not k.startswith("dagster/partition")},
        raise_on_error=False,
    )


@pytest.mark.slow
def test_the_requested_runs_segment_the_images(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path
) -> None:
    driver = Driver(instance, storage, SensorSettings(max_runs=1, settle_seconds=0))
    pictures = (("a.png", "astronaut"), ("b/c.png", "coffee"), ("d.png", "rocket"))
    keys = [write_image(incoming, name, picture) for name, picture in pictures]
    requests, _ = driver.tick()
    assert len(requests) == 1 and requests[0].partition_key is None  # one range of 3
    result = _execute(driver, requests[0])
    assert result.success
    found = materializations(result)
    assert set(found) == {(asset, key) for asset in IMAGE_ASSETS for key in keys}
    write_image(incoming, "d.png", "camera")
    (request,), report = driver.tick()
    assert report.changed == [keys[2]] and request.partition_key == keys[2]
    result = _execute(driver, request)
    assert result.success
    assert {p for _, p in materializations(result)} == {keys[2]}
