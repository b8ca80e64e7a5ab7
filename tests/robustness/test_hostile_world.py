"""Issue 15, a hostile world: racing first runs, vanishing folders, links planted in the
store, special and huge files, hostile JPEG headers, malformed manifests, partition keys
registered from outside, damaged instance databases, forged outputs, killed runs and
out-of-range settings.

One test per case, through the layer where it happens (the engine, the store, the
sensor, ``kseg run``, the Dagster instance). Each checks that nothing outside the store
root (and the instance) changed, and that the good images of the same run or tick
still succeed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
from PIL import Image
from robustness_cases import pattern
from robustness_dagster import (
    Daemon,
    all_intact,
    kseg_run,
    run_partition,
    started_steps,
)
from robustness_util import ROOT, child_env, python
from robustness_util import tree_snapshot as snapshot

import assets.changes
from assets.definitions import build_defs
from assets.incoming import partition_key_for
from assets.names import (
    CHOSEN,
    ELBOW,
    FEATURES,
    IMAGE_ASSETS,
    LABELS,
    PARTITION_TAG,
    PARTITIONS_NAME,
    RANGE_START_TAG,
    RAW,
)
from assets.run import run_command
from assets.sensors import DELETE_SHARE_ENV, MASS_DELETION_MIN, SensorSettings
from assets.settings import ProjectSettings, update_own_settings
from assets.storage import KsegStorage, Store, parquet_bytes
from pipeline.errors import ImageError, KsegError
from pipeline.images import MAX_JPEG_SEGMENTS, decode_image
from pipeline.render import decode_png

OLD = 120.0  # seconds: files older than this have settled for the sensor


# -- helpers -------------------------------------------------------------------------------
def save(folder: Path, relpath: str, height: int = 6, width: int = 8) -> str:
    """A small image at ``folder/relpath``, an hour old; returns its partition key."""
    path = folder / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pattern(height, width)).save(path)
    stamp = time.time() - OLD
    os.utime(path, (stamp, stamp))
    return partition_key_for(relpath)


def errors_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("kseg run: error: ")]


def no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text


def run_in(
    instance: dg.DagsterInstance,
    incoming: Path,
    store_root: Path,
    environ: dict[str, str],
    *,
    all_: bool = False,
):
    """``kseg run`` in process with an environment (``kseg_run`` passes an empty one)."""
    out, err = io.StringIO(), io.StringIO()
    code = run_command(
        str(incoming),
        all_,
        store_root=str(store_root),
        instance=instance,
        environ=environ,
        out=out,
        err=err,
    )
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A folder outside the store, full of things a store operation could reach: files
    named like stored outputs and like the temporary files the store cleans up."""
    folder = tmp_path / "victim"
    folder.mkdir()
    for name in ("raw_image.png", "raw_image.manifest.json", ".raw_image.png.0123.tmp", "x.lock"):
        (folder / name).write_bytes(b"precious " + name.encode())
    return folder


# -- 1. two kseg run at once on a new DAGSTER_HOME ----------------------------------------------
def _alembic_rows(home: Path) -> dict[str, int]:
    """Database file -> rows of its alembic_version table (databases that have one)."""
    rows = {}
    for database in sorted(home.rglob("*.db")):
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
            tables = {t for (t,) in connection.execute("SELECT name FROM sqlite_master")}
            if "alembic_version" in tables:
                (count,) = connection.execute("SELECT COUNT(*) FROM alembic_version").fetchone()
                rows[str(database.relative_to(home))] = count
    return rows


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_kseg_runs_at_once_on_a_new_home_leave_one_usable_instance(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    key = save(incoming, "a.png")
    before = snapshot(incoming)
    pairs = []
    for trial in range(4):  # the race lost 3 of 8 trials before instance creation was locked
        home, store = tmp_path / f"home{trial}", tmp_path / f"store{trial}"
        env = child_env(DAGSTER_HOME=str(home), KSEG_STORE_ROOT=str(store))
        command = python("-m", "assets.cli", "run", "--incoming", str(incoming))
        pairs.append(
            (home, store, [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE) for _ in range(2)])
        )  # fmt: skip
    for home, store, children in pairs:
        for child in children:
            out, err = child.communicate(timeout=600)
            no_traceback(err.decode())
            assert child.returncode == 0, err.decode()
        # One schema per database: exactly one alembic head everywhere.
        rows = _alembic_rows(home)
        assert {"history/runs.db", "schedules/schedules.db"} <= set(rows)
        assert set(rows.values()) == {1}, rows
        assert all_intact(Store(store), key)
    # The instances work for Dagster itself ...
    infos = [
        subprocess.Popen(
            [str(Path(sys.executable).with_name("dagster")), "instance", "info"],
            env=child_env(DAGSTER_HOME=str(home)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for home, _, _ in pairs
    ]
    for info in infos:
        out, err = info.communicate(timeout=300)
        assert info.returncode == 0, err.decode()
        assert b"Run Storage" in out or b"run_storage" in out
    # ... and for a third kseg run, which finds the image up to date.
    home, store, _ = pairs[0]
    out, err = io.StringIO(), io.StringIO()
    code = run_command(
        str(incoming), store_root=str(store), dagster_home=home, environ={}, out=out, err=err
    )
    assert code == 0, err.getvalue()
    assert "0 new, 0 stale, 1 up to date" in out.getvalue()
    assert snapshot(incoming) == before
    assert {p.name for p in tmp_path.iterdir()} == {
        "incoming",
        *(f"home{n}" for n in range(4)),
        *(f"store{n}" for n in range(4)),
    }


# -- 2. a vanished or emptied incoming folder --------------------------------------------------
def _fill(incoming: Path, count: int) -> list[str]:
    return [save(incoming, f"img{n:02d}.png") for n in range(count)]


def test_a_vanished_or_emptied_incoming_folder_holds_deletions_until_confirmed(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path, tmp_path: Path
) -> None:
    confirm = 2.0
    daemon = Daemon(
        instance, storage, SensorSettings(settle_seconds=0, delete_confirm_seconds=confirm)
    )
    keys = _fill(incoming, MASS_DELETION_MIN + 2)
    daemon.tick()
    assert daemon.partitions() == keys
    store = storage.store()
    store.save(keys[0], RAW, cache_key="k", code_version="1", files={"raw_image.png": b"x"})
    outputs = store.folder(keys[0])

    # Unmounted (the folder is gone): nothing is added or removed.
    incoming.rename(tmp_path / "unmounted")
    data, _ = daemon.tick()
    assert daemon.partitions() == keys and "does not exist" in data.skip_message
    (tmp_path / "unmounted").rename(incoming)

    # Emptied (umount -l leaves an empty mount point), while a new image arrives: the
    # new image is registered in the same tick, the vanished ones are held and said so.
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for path in incoming.iterdir():
        path.rename(moved / path.name)
    new = save(incoming, "new.png")
    outside = snapshot(tmp_path, skip=(tmp_path / "store", tmp_path / "dagster_home"))
    data, report = daemon.tick()
    assert report.added == [new] and report.deleted == []
    assert sorted(report.held_deletions) == sorted(keys)
    assert "12 removal(s) held: most images vanished at once" in report.summary()
    assert set(daemon.partitions()) == {*keys, new}
    assert outputs.exists() and not (tmp_path / "store" / "trash").exists()
    data, report = daemon.tick()  # still gone, not for long enough: still held
    assert report.deleted == [] and len(report.held_deletions) == len(keys)
    assert "held" in data.skip_message
    assert set(daemon.partitions()) == {*keys, new}

    # Gone for the confirmation time: removed, their outputs moved to the trash.
    time.sleep(confirm + 0.2)
    _, report = daemon.tick()
    assert sorted(report.deleted) == sorted(keys) and report.held_deletions == []
    assert daemon.partitions() == [new]
    assert not outputs.exists() and list(report.trashed) == [keys[0]]
    assert snapshot(tmp_path, skip=(tmp_path / "store", tmp_path / "dagster_home")) == outside


def test_losing_most_files_at_once_is_held_unless_overridden(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path, tmp_path: Path
) -> None:
    keys = _fill(incoming, MASS_DELETION_MIN + 4)
    held = Daemon(instance, storage, SensorSettings(settle_seconds=0))
    held.tick()
    # A few deletions are ordinary: removed at once.
    (incoming / "img00.png").unlink()
    _, report = held.tick()
    assert report.deleted == [keys[0]] and report.held_deletions == []
    # Most of the rest at once (12 of 13): held ...
    for path in sorted(incoming.iterdir())[:-1]:
        path.unlink()
    outside = snapshot(tmp_path, skip=(tmp_path / "store", tmp_path / "dagster_home"))
    _, report = held.tick()
    assert report.deleted == [] and sorted(report.held_deletions) == keys[1:-1]
    assert held.partitions() == keys[1:]
    # ... and removed at once with the documented override.
    override = SensorSettings.from_env({DELETE_SHARE_ENV: "1", "KSEG_SENSOR_SETTLE_SECONDS": "0"})
    daemon = Daemon(instance, storage, override)
    daemon.cursor = held.cursor
    _, report = daemon.tick()
    assert sorted(report.deleted) == keys[1:-1] and daemon.partitions() == [keys[-1]]
    assert snapshot(tmp_path, skip=(tmp_path / "store", tmp_path / "dagster_home")) == outside


# -- 3. links in the store -----------------------------------------------------------------------
def test_links_planted_or_swapped_into_the_store_reach_nothing_outside(
    instance: dg.DagsterInstance,
    storage: KsegStorage,
    incoming: Path,
    tmp_path: Path,
    victim: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    planted, swapped, good = (save(incoming, f"{n}.png") for n in "abc")
    images = tmp_path / "store" / "images"
    images.mkdir(parents=True)
    (images / planted).symlink_to(victim)  # planted before the run
    second = tmp_path / "victim2"
    shutil.copytree(victim, second)
    outside = snapshot(tmp_path, skip=(tmp_path / "store", tmp_path / "dagster_home"))
    real_save = Store.save
    swaps = []

    def save_then_swap(self, partition, asset, **kwargs):
        manifest = real_save(self, partition, asset, **kwargs)
        if partition == swapped and asset == RAW and not swaps:  # mid-run, after one write
            (images / swapped).rename(tmp_path / "store" / "moved-away")
            (images / swapped).symlink_to(second)
            swaps.append(asset)
        return manifest

    monkeypatch.setattr(Store, "save", save_then_swap)
    result = kseg_run(instance, incoming, tmp_path / "store")
    assert swaps == [RAW]
    assert result.code == 1
    no_traceback(result.err)
    errors = result.error_lines
    assert errors and all("symbolic link" in line for line in errors), errors
    assert any(planted in line for line in errors) and any(swapped in line for line in errors)
    assert all_intact(storage.store(), good)
    # Nothing outside the store was written, renamed or removed (temporary-file cleanup
    # and every write stopped at the link).
    assert snapshot(tmp_path, skip=(tmp_path / "store", tmp_path / "dagster_home")) == outside
    assert sorted(p.name for p in victim.iterdir()) == sorted(p.name for p in second.iterdir())
    assert (images / planted).is_symlink() and (images / swapped).is_symlink()


# -- 4. a store inside the incoming folder ---------------------------------------------------------
def test_a_store_inside_the_incoming_folder_is_refused_at_load(
    instance: dg.DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    key = save(data, "a.png")
    store_root = data / "store"
    before = snapshot(tmp_path, skip=(tmp_path / "dagster_home",))
    problem = "is inside the incoming folder"
    # kseg run: one line, exit 2, nothing run.
    result = kseg_run(instance, data, store_root)
    assert result.code == 2
    (line,) = result.error_lines
    assert problem in line and str(store_root) in line and "KSEG_STORE_ROOT" in line
    assert not instance.get_runs()
    # The code location does not load ...
    monkeypatch.setenv("KSEG_INCOMING_DIR", str(data))
    monkeypatch.setenv("KSEG_STORE_ROOT", str(store_root))
    with pytest.raises(KsegError, match=problem):
        build_defs()
    monkeypatch.delenv("KSEG_INCOMING_DIR")
    monkeypatch.delenv("KSEG_STORE_ROOT")
    # ... and a run or a tick of a code location built around such a storage refuses.
    storage = KsegStorage(incoming_dir=str(data), store_root=str(store_root))
    refused = run_partition(instance, storage, key)
    assert not refused.success
    (failure,) = [e for e in refused.all_events if e.event_type_value == "RESOURCE_INIT_FAILURE"]
    assert problem in failure.event_specific_data.error.to_string()  # before any step
    assert not [e for e in refused.all_events if e.event_type_value == "STEP_START"]
    data_, report = Daemon(instance, storage).tick()
    assert problem in data_.skip_message and report.added == []
    assert instance.get_dynamic_partitions(PARTITIONS_NAME) == [key]  # registered by the run
    assert snapshot(tmp_path, skip=(tmp_path / "dagster_home",)) == before
    assert not store_root.exists()


# -- 5. special and huge files ---------------------------------------------------------------
class Grower:
    """Appends to a file from a thread while it is read (up to ``limit`` bytes)."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path, self.limit = path, limit
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._grow, daemon=True)

    def _grow(self) -> None:
        chunk = os.urandom(1 << 20)
        with open(self.path, "ab") as stream:
            while not self.stop.is_set() and stream.tell() < self.limit:
                stream.write(chunk)
                stream.flush()
                time.sleep(0.002)

    def __enter__(self) -> Grower:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


@pytest.mark.timeout(300)
def test_fifos_devices_huge_and_growing_files_are_named_and_the_rest_is_processed(
    instance: dg.DagsterInstance,
    storage: KsegStorage,
    incoming: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    good = save(incoming, "good.png")
    os.mkfifo(incoming / "pipe.png")
    device = os.geteuid() == 0
    if device:  # /dev/zero's numbers: reads never end
        os.mknod(incoming / "zero.png", stat.S_IFCHR | 0o600, os.makedev(1, 5))
    with open(incoming / "sparse.png", "wb") as stream:
        stream.truncate(6 << 30)  # 6 GiB, above the default limit of 1 GiB, costing no disk
    limit = 16 << 20
    with open(incoming / "big.png", "wb") as stream:
        stream.truncate(limit + 1)  # above the configured limit only
    growing = incoming / "growing.png"
    Image.fromarray(pattern(4, 4)).save(growing)
    stamp = time.time() - OLD
    os.utime(growing, (stamp, stamp))
    grower = Grower(growing, 4 * limit)
    real_look = assets.changes.look

    def look_then_grow(path):  # the file starts growing as the survey first looks at it
        seen = real_look(path)
        if path == growing and not grower.thread.is_alive() and not grower.stop.is_set():
            grower.__enter__()
            while growing.stat().st_size == seen.size:  # it grows before it is read
                time.sleep(0.001)
        return seen

    monkeypatch.setattr(assets.changes, "look", look_then_grow)
    skip = (tmp_path / "store", tmp_path / "dagster_home", growing)
    outside = snapshot(tmp_path, skip=skip)
    started = time.perf_counter()
    try:
        code, out, err = run_in(
            instance, incoming, tmp_path / "store", {"KSEG_MAX_FILE_BYTES": str(limit)}
        )
    finally:
        grower.__exit__()
    seconds = time.perf_counter() - started
    no_traceback(err)
    assert code == 1
    errors = errors_of(err)
    special = "not a regular file (a device, a FIFO or a socket)"
    expected = {
        "pipe.png": special,
        "sparse.png": f"file has {6 << 30} bytes, above the limit of {limit} (KSEG_MAX_FILE_BYTES)",
        "big.png": f"file has {limit + 1} bytes, above the limit of {limit} (KSEG_MAX_FILE_BYTES)",
    }
    if device:
        expected["zero.png"] = special
    for name, reason in expected.items():
        assert f"kseg run: error: {incoming / name} ({reason})" in errors, errors
    (grew,) = [line for line in errors if "growing.png" in line]
    assert any(
        reason in grew
        for reason in ("changed while it was read", "grew above the limit", "above the limit")
    ), grew
    assert len(errors) == len(expected) + 1
    assert "processed 1 image(s)" in out, (out, err)
    assert all_intact(storage.store(), good)
    assert seconds < 120  # 6 GiB were never read
    assert snapshot(tmp_path, skip=skip) == outside


@pytest.mark.timeout(120)
def test_a_registered_image_replaced_by_a_fifo_fails_its_run_without_hanging(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path
) -> None:
    key = save(incoming, "a.png")
    other = save(incoming, "b.png")
    assert run_partition(instance, storage, key).success
    (incoming / "a.png").unlink()
    os.mkfifo(incoming / "a.png")
    result = run_partition(instance, storage, key)
    assert not result.success
    assert run_partition(instance, storage, other).success


@pytest.mark.timeout(120)
def test_a_fifo_in_a_stored_files_place_is_recomputed_not_waited_for(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path, tmp_path: Path
) -> None:
    key, other = save(incoming, "a.png"), save(incoming, "b.png")
    assert kseg_run(instance, incoming, tmp_path / "store").code == 0
    stored = tmp_path / "store" / "images" / key / "raw_image.png"
    original = stored.read_bytes()
    stored.unlink()
    os.mkfifo(stored)
    store = storage.store()
    assert not store.verify(store.manifest(key, RAW))  # refused unread
    result = kseg_run(instance, incoming, tmp_path / "store")
    assert result.code == 0, result.err
    assert "0 new, 1 stale, 1 up to date" in result.out
    assert stat.S_ISREG(stored.lstat().st_mode) and stored.read_bytes() == original
    assert all_intact(store, key) and all_intact(store, other)


# -- 6. a JPEG with thousands of header segments --------------------------------------------------
def hostile_jpeg(segments: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pattern(64, 64)).save(buffer, "JPEG")
    jpeg = buffer.getvalue()
    body = b"\0" * 65527
    headers = b"".join(
        bytes([0xFF, 0xE1 + n % 15]) + (65535).to_bytes(2, "big") + b"Exif\0\0" + body
        for n in range(segments)
    )
    return jpeg[:2] + headers + jpeg[2:]


@pytest.mark.timeout(300)
def test_a_jpeg_with_2000_exif_segments_is_refused_quickly(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path, tmp_path: Path
) -> None:
    data = hostile_jpeg(2000)
    started = time.perf_counter()
    with pytest.raises(ImageError, match=f"more than {MAX_JPEG_SEGMENTS} segments"):
        decode_image(data, name="exif.jpg")
    assert time.perf_counter() - started < 10  # it took 105 s in Pillow
    good = save(incoming, "good.png")
    (incoming / "exif.jpg").write_bytes(data)
    bad = partition_key_for("exif.jpg")
    outside = snapshot(tmp_path, skip=(tmp_path / "store", tmp_path / "dagster_home"))
    started = time.perf_counter()
    result = kseg_run(instance, incoming, tmp_path / "store")
    assert time.perf_counter() - started < 90
    no_traceback(result.err)
    assert result.code == 1
    (line,) = result.error_lines
    assert str(incoming / "exif.jpg") in line and f"more than {MAX_JPEG_SEGMENTS} segments" in line
    assert all_intact(storage.store(), good)
    assert storage.store().manifest(bad, RAW) is None
    assert snapshot(tmp_path, skip=(tmp_path / "store", tmp_path / "dagster_home")) == outside


# -- 7. malformed manifests --------------------------------------------------------------------
def test_malformed_manifests_are_cache_misses_and_the_run_processes_every_other_image(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path, tmp_path: Path
) -> None:
    keys = {name: save(incoming, f"{name}.png") for name in "abcdefg"}
    assert kseg_run(instance, incoming, tmp_path / "store").code == 0
    images = tmp_path / "store" / "images"

    def edit(name: str, asset: str, change) -> None:
        path = images / keys[name] / f"{asset}.manifest.json"
        document = json.loads(path.read_text())
        change(document)
        path.write_text(json.dumps(document))

    edit("a", RAW, lambda d: d.update(files=[]))
    edit("b", FEATURES, lambda d: d.update(files={"../../x.png": {"sha256": "0", "bytes": 1}}))
    edit("c", CHOSEN, lambda d: d.update(cache_key=3, seconds="fast"))
    (images / keys["d"] / f"{LABELS}.manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    (images / keys["e"] / f"{ELBOW}.manifest.json").unlink()
    (images / keys["e"] / f"{ELBOW}.manifest.json").mkdir()  # a folder in its place
    shutil.rmtree(images / keys["f"])
    (images / keys["f"]).write_bytes(b"a file where a folder should be")
    outside = snapshot(tmp_path, skip=(tmp_path / "store", tmp_path / "dagster_home"))

    result = kseg_run(instance, incoming, tmp_path / "store")
    no_traceback(result.err)
    store = storage.store()
    for name in "abcdg":  # a cache miss: recomputed
        assert all_intact(store, keys[name]), name
    assert result.code == 1
    # The two that cannot be stored fail on their own, each naming its path, once.
    assert sorted(result.error_lines) == sorted(
        [
            f"kseg run: error: refusing {images / keys['e'] / 'elbow_metrics.manifest.json'}: "
            "a folder is in its place",
            f"kseg run: error: refusing {images / keys['f']}: it is not a folder",
        ]
    )
    assert "report" in result.out
    assert snapshot(tmp_path, skip=(tmp_path / "store", tmp_path / "dagster_home")) == outside


# -- 8. hostile partition keys registered from outside ---------------------------------------------
def test_hostile_partition_keys_are_skipped_by_the_report_and_removed_by_the_sensor(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path, tmp_path: Path
) -> None:
    good = save(incoming, "a.png")
    hostile = ["../../etc", "/etc/passwd", "nul\0key", "k" * 100_000]
    instance.add_dynamic_partitions(PARTITIONS_NAME, hostile)  # as GraphQL would
    outside = snapshot(tmp_path, skip=(tmp_path / "store", tmp_path / "dagster_home"))
    for _ in range(2):  # not "on every run"
        result = kseg_run(instance, incoming, tmp_path / "store")
        assert result.code == 0, result.err
        assert "report" in result.out
    report = pq.read_table(tmp_path / "store" / "report" / "segmentation_report.parquet")
    assert report.column("partition_key").to_pylist() == [good]
    assert all_intact(storage.store(), good)
    # The sensor removes them in one tick, each named once (shortened), never again.
    daemon = Daemon(instance, storage, SensorSettings(settle_seconds=0))
    _, report_ = daemon.tick()
    assert sorted(report_.deleted) == sorted(hostile) and daemon.partitions() == [good]
    _, again = daemon.tick()
    assert again.deleted == []
    assert sorted(p.name for p in (tmp_path / "store" / "images").iterdir()) == [good]
    assert snapshot(tmp_path, skip=(tmp_path / "store", tmp_path / "dagster_home")) == outside
    assert Path("/etc/passwd").is_file()


# -- 9. a damaged instance ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def used_home(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(home, incoming, store) of an instance that has recorded one kseg run."""
    base = tmp_path_factory.mktemp("used")
    incoming, store, home = base / "incoming", base / "store", base / "home"
    save(incoming, "a.png")
    out, err = io.StringIO(), io.StringIO()
    code = run_command(
        str(incoming), store_root=str(store), dagster_home=home, environ={}, out=out, err=err
    )
    assert code == 0, err.getvalue()
    return home, incoming, store


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(8192))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _unclosed_yaml(path: Path) -> None:
    path.write_text("run_coordinator: [unclosed\n")


def _yaml_list(path: Path) -> None:
    path.write_text("- a list, not settings\n")


DATABASES = ("history/runs/index.db", "history/runs.db", "schedules/schedules.db")
DAMAGES = [
    *((db, _garbage, "the database is damaged (file is not a database)") for db in DATABASES),
    *((db, _truncate, "the database is damaged") for db in DATABASES),
    ("dagster.yaml", _unclosed_yaml, "not a valid dagster.yaml"),
    ("dagster.yaml", _yaml_list, "not a valid dagster.yaml (it is not a mapping of settings)"),
]


@pytest.mark.parametrize(
    ("relpath", "damage", "reason"), DAMAGES, ids=[f"{r}-{d.__name__}" for r, d, _ in DAMAGES]
)
def test_a_damaged_instance_is_named_with_what_to_do(
    used_home, tmp_path: Path, relpath: str, damage, reason: str
) -> None:
    source, incoming, store = used_home
    home = tmp_path / "home"
    shutil.copytree(source, home)
    damage(home / relpath)
    damaged = (home / relpath).read_bytes()
    before = snapshot(tmp_path, skip=(home,))  # SQLite may add its -shm files in the home
    stored = snapshot(store)
    out, err = io.StringIO(), io.StringIO()
    code = run_command(
        str(incoming), store_root=str(store), dagster_home=home, environ={}, out=out, err=err
    )
    assert code == 2
    (line,) = err.getvalue().splitlines()
    assert line.startswith(f"kseg run: error: {home / relpath}: {reason}")
    assert "move it aside" in line or "fix it, or delete it" in line
    assert (home / relpath).read_bytes() == damaged  # left for the user, not "repaired"
    assert snapshot(tmp_path, skip=(home,)) == before and snapshot(store) == stored


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kseg_run_on_a_damaged_instance_prints_one_line_and_no_traceback(
    used_home, tmp_path: Path
) -> None:
    source, incoming, store = used_home
    home = tmp_path / "home"
    shutil.copytree(source, home)
    _truncate(home / "history" / "runs.db")
    env = child_env(DAGSTER_HOME=str(home), KSEG_STORE_ROOT=str(store))
    command = python("-m", "assets.cli", "run", "--incoming", str(incoming))
    child = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=240)
    stderr = child.stderr.decode()
    assert child.returncode == 2
    no_traceback(stderr)
    (line,) = stderr.splitlines()
    assert f"{home / 'history' / 'runs.db'}: the database is damaged" in line


# -- 10. a forged but consistent output ---------------------------------------------------------
def _forge(folder: Path, asset: str, name: str, data: bytes) -> None:
    (folder / name).write_bytes(data)
    path = folder / f"{asset}.manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    path.write_text(json.dumps(manifest))


def test_a_failed_check_on_a_forged_output_fails_kseg_run_and_blocks_the_steps_below(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path, tmp_path: Path
) -> None:
    forged, good = save(incoming, "a.png", 12, 12), save(incoming, "b.png", 12, 12)
    assert kseg_run(instance, incoming, tmp_path / "store").code == 0
    folder = tmp_path / "store" / "images" / forged
    table = pq.read_table(folder / "pixel_features.parquet")
    _forge(folder, FEATURES, "pixel_features.parquet", parquet_bytes(table.slice(0, 100)))
    store = storage.store()
    assert store.manifest(forged, FEATURES) is not None and all_intact(store, forged)
    outside = snapshot(tmp_path, skip=(tmp_path / "store", tmp_path / "dagster_home"))
    runs_before = {run.run_id for run in instance.get_runs()}
    code, out, err = run_in(instance, incoming, tmp_path / "store", {}, all_=True)
    no_traceback(err)
    assert code == 1
    checks = [line for line in err.splitlines() if line.startswith("kseg run: check failed: ")]
    assert checks == [
        f"kseg run: check failed: {forged}: check rows_match_pixels of pixel_features failed: "
        "100 rows, expected 12x12=144"
    ], err
    assert "1 failed check(s)" in out
    # The blocking check failed the batch before the steps below the forged output; run
    # again image by image, the forged one stops there again and the good one completes.
    new_runs = sorted(
        (run for run in instance.get_runs() if run.run_id not in runs_before),
        key=lambda run: instance.get_run_record_by_id(run.run_id).create_timestamp,
    )
    batch, alone, other = (run for run in new_runs if run.job_name == "segment_images")
    assert (batch.tags[RANGE_START_TAG], alone.tags[PARTITION_TAG]) == (forged, forged)
    for run in (batch, alone):
        assert run.status == dg.DagsterRunStatus.FAILURE
        assert started_steps(instance, run.run_id) == {RAW, FEATURES}
    assert other.tags[PARTITION_TAG] == good and other.status == dg.DagsterRunStatus.SUCCESS
    assert started_steps(instance, other.run_id) == set(IMAGE_ASSETS)
    assert all_intact(store, good)
    assert snapshot(tmp_path, skip=(tmp_path / "store", tmp_path / "dagster_home")) == outside


# -- 11. runs killed by kill -9 --------------------------------------------------------------
def _run_statuses(home: Path) -> list[str]:
    try:
        with sqlite3.connect(f"file:{home / 'history' / 'runs.db'}?mode=ro", uri=True) as db:
            return [status for (status,) in db.execute("SELECT status FROM runs")]
    except sqlite3.Error:  # not created yet, or busy
        return []


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_runs_of_a_killed_kseg_run_are_marked_failed_by_the_next(tmp_path: Path) -> None:
    incoming, store, home = tmp_path / "incoming", tmp_path / "store", tmp_path / "home"
    keys = [save(incoming, f"{n}.png", 160, 200) for n in range(6)]
    env = child_env(DAGSTER_HOME=str(home), KSEG_STORE_ROOT=str(store))
    command = python("-m", "assets.cli", "run", "--incoming", str(incoming))
    child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 300
    try:
        while "STARTED" not in _run_statuses(home):  # kill it while it executes its steps
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        unfinished = [r.run_id for r in instance.get_runs() if not r.is_finished]
    assert unfinished, "the run finished before it could be killed"
    outside = snapshot(tmp_path, skip=(store, home))
    out, err = io.StringIO(), io.StringIO()
    code = run_command(
        str(incoming), store_root=str(store), dagster_home=home, environ={}, out=out, err=err
    )
    assert code == 0, err.getvalue()
    assert f"marked {len(unfinished)} run(s) of a killed kseg run as failed" in out.getvalue()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for run_id in unfinished:
            assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
        assert all(run.is_finished for run in instance.get_runs())
    for key in keys:
        assert all_intact(Store(store), key)
    assert snapshot(tmp_path, skip=(store, home)) == outside


# -- 12. settings at their limits ----------------------------------------------------------------
def test_a_seed_of_2_to_the_32_is_refused_at_validation_with_a_spatial_weight(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path, tmp_path: Path
) -> None:
    key = save(incoming, "a.png")
    environ = {"KSEG_SEED": str(2**32), "KSEG_SPATIAL_WEIGHT": "0.5"}
    code, _, err = run_in(instance, incoming, tmp_path / "store", environ)
    assert code == 2
    (line,) = err.splitlines()
    assert "KSEG_SEED" in line and "2**32 - 1" in line
    assert not instance.get_runs() and not (tmp_path / "store").exists()
    with pytest.raises(KsegError, match="seed"):
        update_own_settings(
            storage.store(),
            ProjectSettings.from_env({}),
            [key],
            {"seed": 2**32, "spatial_weight": 0.5},
            updated_by="test",
        )
    assert storage.store().own_settings(key) is None
    # The largest seed works, with a spatial weight, to the end.
    environ["KSEG_SEED"] = str(2**32 - 1)
    code, _, err = run_in(instance, incoming, tmp_path / "store", environ)
    assert code == 0, err
    assert all_intact(storage.store(), key)


def test_kseg_segment_with_max_pixels_0_is_a_usage_error(tmp_path: Path) -> None:
    Image.fromarray(pattern(6, 8)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    image = str(tmp_path / "a.png")
    command = python("-m", "assets.cli", "segment", "--max-pixels", "0", "--out", str(out), image)
    child = subprocess.run(command, cwd=ROOT, env=child_env(), capture_output=True, timeout=120)
    assert child.returncode == 2
    (line,) = child.stderr.decode().splitlines()
    assert line == "kseg: error: invalid setting 'max_pixels': must be a positive integer, got 0"
    assert not out.exists()


def _flat_png(width: int, height: int) -> bytes:
    """A greyscale PNG of one colour, built without holding its pixels (zlib of zeros)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    packer = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def test_a_stored_png_of_95_megapixels_decodes_without_a_bomb_warning() -> None:
    width, height = 10_000, 9_500  # between Pillow's warning (89.5 MP) and kseg's limit
    assert Image.MAX_IMAGE_PIXELS < width * height <= 100_000_000
    labels = decode_png(_flat_png(width, height))  # strict: a warning would be an error
    assert labels.shape == (height, width) and not labels.any()
