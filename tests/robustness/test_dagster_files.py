"""Issue 5 through Dagster, file-system cases: forged partition keys, links and
directories appearing under a registered name, unreadable files, a file replaced while
its run is in progress, key collisions, and no unpickling anywhere.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image
from robustness_cases import pattern
from robustness_dagster import (
    QUIET,
    all_intact,
    failures,
    forbid_unpickling,
    is_batch,
    kseg_run,
    materialised,
    project,
    register,
    run_partition,
    run_partitions,
)
from robustness_util import ROOT, child_env, python, without_file_permission_override

import assets.incoming
import assets.steps.asset
import assets.steps.raw_image
from assets.definitions import build_defs
from assets.incoming import partition_key_for
from assets.names import IMAGE_ASSETS, PARTITIONS_NAME, RAW, SETTINGS, SOURCE
from assets.partitions import run_tags_for
from assets.run import materialise
from assets.steps.memo import MEMO
from assets.storage import KsegStorage, Store
from pipeline.render import decode_png


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save(folder: Path, relpath: str, height: int = 6, width: int = 8) -> str:
    path = folder / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pattern(height, width)).save(path)
    return partition_key_for(relpath)


def the_failure(instance, result):
    assert not result.success
    (failure,) = failures(instance, result.run_id)
    return failure


def test_a_single_partition_run_fails_with_that_files_message(
    instance, storage: KsegStorage, incoming: Path
) -> None:
    # As the UI launches it: one partition per run.
    (incoming / "notes.jpg").write_bytes(b"plain text\n")
    key = partition_key_for("notes.jpg")
    failure = the_failure(instance, run_partition(instance, storage, key))
    message = f"{incoming / 'notes.jpg'}: not a recognised image format"
    assert failure.step == RAW  # each step is its own op: the failure names it
    assert failure.description == f"{RAW}: {message}"
    assert failure.partitions == {key: message}
    assert (failure.metadata["failed"], failure.metadata["total"]) == (1, 1)


FORGED = [
    "../escape",
    "../../etc/kseg-escape",
    "/tmp/kseg-absolute-escape",
    "a/b",
    "",  # not first nor last: Dagster itself refuses an empty range boundary
    "..",
    ".",
    "images/../../up",
    "a\\..\\..\\b",
    "%2e%2e%2fup",
    "UPPER-0123456789",
    "-leading-dash",
    "with space",
    "comma,key",
    "[brackets]",
    "ünïcødé",
    "new\nline",
    "x" * 200,
]


def test_forged_partition_keys_are_refused_and_write_nothing(
    instance, storage: KsegStorage, incoming: Path, tmp_path: Path
) -> None:
    # Partition keys come from the instance (anyone may add one through the API or UI);
    # every key not made by partition_key_for fails its partition and touches no file.
    good = save(incoming, "good.png")
    register(instance, [*FORGED, good])
    runs, errors, checks = materialise(instance, build_defs(storage, project()), [*FORGED, good])
    # One batch, which fails at raw_image naming every forged key; then one run per
    # image, as kseg run splits a failed batch: each forged key fails on its own and the
    # good image completes.
    batch, *singles = (instance.get_run_by_id(run_id) for run_id in runs)
    assert is_batch(batch) and run_partitions(instance, batch) == [*FORGED, good]
    (failure,) = failures(instance, batch.run_id)
    assert failure.step == RAW and set(failure.partitions) == set(FORGED)
    for key in FORGED:
        message = f"refusing partition key {key!r}: not a kseg partition key"
        assert failure.partitions[key] == message
    assert (failure.metadata["failed"], failure.metadata["total"]) == (len(FORGED), len(FORGED) + 1)
    assert [run_partitions(instance, run) for run in singles] == [[key] for key in [*FORGED, good]]
    for run, key in zip(singles, [*FORGED, good], strict=True):
        if key == good:
            assert run.status == dg.DagsterRunStatus.SUCCESS
            continue
        (own,) = failures(instance, run.run_id)
        assert own.partitions == {key: f"refusing partition key {key!r}: not a kseg partition key"}
    assert all_intact(storage.store(), good)
    store_root = tmp_path / "store"
    assert {p.name for p in (store_root / "images").iterdir()} == {good}
    assert {p.name for p in (store_root / "locks").iterdir()} == {f"{good}.lock"}
    outside = {p.name for p in tmp_path.iterdir()}
    assert outside == {"incoming", "store", "dagster_home"}
    assert not Path("/tmp/kseg-absolute-escape").exists()
    assert len(errors) == len(FORGED) and checks == []  # each forged key named once


def test_the_store_refuses_forged_keys_for_every_operation(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    for key in FORGED:
        for operation in (
            lambda k: store.folder(k),
            lambda k: store.read_bytes(k, "raw_image.png"),
            lambda k: store.manifest(k, "raw_image"),
            lambda k: store.save(k, "raw_image", cache_key="c", code_version="1", files={}),
            lambda k: store.lock(k).__enter__(),
            lambda k: store.trash(k),
            lambda k: store.own_settings(k),
            lambda k: store.save_own_settings(k, b"{}"),
        ):
            with pytest.raises(Exception, match="refusing partition key"):
                operation(key)
    assert not (tmp_path / "store").exists()


def test_a_link_to_outside_swapped_in_after_the_scan_is_refused_at_read_time(
    instance, storage: KsegStorage, incoming: Path, tmp_path: Path, monkeypatch
) -> None:
    key = save(incoming, "a.png")
    secret = tmp_path / "secret.png"
    Image.fromarray(pattern(3, 3)).save(secret)
    read_source = assets.steps.asset.read_source

    def swap_then_read(root, relpath, **kwargs):  # between the scan and the read
        (incoming / "a.png").unlink()
        (incoming / "a.png").symlink_to(secret)
        return read_source(root, relpath, **kwargs)

    monkeypatch.setattr(assets.steps.asset, "read_source", swap_then_read)
    failure = the_failure(instance, run_partition(instance, storage, key))
    assert failure.description == (
        f"{RAW}: {incoming / 'a.png'}: 'a.png' leads outside the incoming folder"
    )
    assert not (tmp_path / "store" / "images" / key).exists()


def test_a_registered_image_that_became_a_directory(
    instance, storage: KsegStorage, incoming: Path
) -> None:
    key = save(incoming, "x.jpg")
    assert run_partition(instance, storage, key).success
    (incoming / "x.jpg").unlink()
    (incoming / "x.jpg").mkdir()
    # What is at x.jpg now is no image: the partition fails, naming it, and nothing is read.
    failure = the_failure(instance, run_partition(instance, storage, key))
    message = f"{key}: no image in the incoming folder has this partition key"
    assert failure.description == f"{RAW}: {message}"
    assert failure.partitions == {key: message}
    assert not materialised(instance, failure.run_id)


def _deny(monkeypatch, target: Path) -> None:
    """Simulate an unreadable file in process (root reads anything): opening ``target``
    raises what opening a chmod 000 file raises for a normal user (every reader of an
    image file, the survey's hash and the step's read, opens it with ``os.open``)."""
    original = os.open

    def deny_open(path, flags, *args, **kwargs):
        if os.path.abspath(path) == os.path.abspath(target):
            raise PermissionError(13, "Permission denied", str(path))
        return original(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny_open)


def test_an_unreadable_file_fails_its_partition_only(
    instance, storage: KsegStorage, incoming: Path, tmp_path: Path, monkeypatch
) -> None:
    good = save(incoming, "a.png")
    bad = save(incoming, "b.png")
    _deny(monkeypatch, incoming / "b.png")
    result = kseg_run(instance, incoming, tmp_path / "store")
    assert result.code == 1
    # kseg run's survey cannot hash it: it is named, and neither registered nor run.
    assert result.error_lines == [
        f"kseg run: error: {incoming / 'b.png'} (cannot be read: Permission denied)"
    ]
    assert "processed 1 image(s) in 1 run(s), 1 error(s)" in result.out
    assert all_intact(storage.store(), good)
    assert not (tmp_path / "store" / "images" / bad).exists()
    assert list(instance.get_dynamic_partitions(PARTITIONS_NAME)) == [good]
    # Observing the sources (what drives automation) skips it and observes the others.
    register(instance, [bad])
    job = build_defs(storage, project()).resolve_job_def("observe_images")
    observed = job.execute_in_process(
        instance=instance, tags=_range([good, bad], instance), run_config=QUIET
    )
    assert observed.success
    events = observed.asset_observations_for_node("observe_sources")
    assert {(e.asset_key.to_user_string(), e.partition) for e in events} == {
        (SOURCE, good),
        (SETTINGS, good),
    }
    # A run of it fails that partition, naming the file and the reason.
    failure = the_failure(instance, run_partition(instance, storage, bad))
    message = f"{incoming / 'b.png'}: cannot read file (Permission denied)"
    assert failure.partitions == {bad: message}


def _range(keys: list[str], instance) -> dict[str, str]:
    order = [k for k in instance.get_dynamic_partitions(PARTITIONS_NAME) if k in keys]
    return run_tags_for(order[0], order[-1])


@pytest.mark.slow
def test_kseg_run_with_a_really_unreadable_file(tmp_path: Path) -> None:
    # A real chmod 000 file (as root, in a child without the permission override), after
    # both files were materialised: kseg run must neither crash while planning nor stop.
    prefix = without_file_permission_override()
    if prefix is None:
        pytest.skip("running as root without setpriv: file modes cannot be enforced")
    incoming, store, home = tmp_path / "in", tmp_path / "store", tmp_path / "home"
    save(incoming, "a.png")
    save(incoming, "b.png", 5, 5)
    env = child_env(KSEG_STORE_ROOT=str(store), DAGSTER_HOME=str(home))
    command = python("-m", "assets.cli", "run", "--incoming", str(incoming))
    first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=300)
    assert first.returncode == 0, first.stderr.decode()
    (incoming / "b.png").write_bytes((incoming / "a.png").read_bytes())  # changed ...
    (incoming / "b.png").chmod(0)  # ... and unreadable
    try:
        second = subprocess.run(
            [*prefix, *command], cwd=ROOT, env=env, capture_output=True, timeout=300
        )
    finally:
        (incoming / "b.png").chmod(0o644)
    stderr = second.stderr.decode()
    assert second.returncode == 1 and "Traceback" not in stderr
    assert stderr.splitlines() == [
        f"kseg run: error: {incoming / 'b.png'} (cannot be read: Permission denied)"
    ]
    # Its bytes cannot be read, so it is not planned (the count of up-to-date images:
    # test_kseg_run_does_not_count_an_unreadable_file_as_up_to_date).
    assert "processed 0 image(s) in 0 run(s), 1 error(s)" in second.stdout.decode()


_COUNTS = re.compile(r"kseg run: (\d+) image\(s\) in .*: (\d+) new, (\d+) stale, (\d+) up to date")


def test_kseg_run_does_not_count_an_unreadable_file_as_up_to_date(
    instance, storage: KsegStorage, incoming: Path, tmp_path: Path, monkeypatch
) -> None:
    save(incoming, "a.png")
    save(incoming, "b.png", 5, 5)
    assert kseg_run(instance, incoming, tmp_path / "store").code == 0
    (incoming / "b.png").write_bytes((incoming / "a.png").read_bytes())  # changed ...
    _deny(monkeypatch, incoming / "b.png")  # ... and unreadable
    second = kseg_run(instance, incoming, tmp_path / "store")
    assert second.error_lines == [
        f"kseg run: error: {incoming / 'b.png'} (cannot be read: Permission denied)"
    ]
    (counts,) = _COUNTS.findall(second.out)
    images, new, _stale, up_to_date = map(int, counts)
    assert images == 2 and new == 0
    assert up_to_date == 1  # a.png only: b.png's new bytes were never seen


def test_a_file_replaced_while_its_run_is_in_progress(
    instance, storage: KsegStorage, incoming: Path, tmp_path: Path, monkeypatch
) -> None:
    # The run reads the file once, hashes those bytes and decodes those bytes: replaced
    # mid-run, it finishes on the version it hashed, and the next run sees the new one.
    key = save(incoming, "a.png", 6, 8)
    original = (incoming / "a.png").read_bytes()
    decode = assets.steps.raw_image.decode_image

    def replace_then_decode(data, **kwargs):
        Image.fromarray(pattern(9, 4)).save(incoming / ".a.png.new", format="PNG")
        os.replace(incoming / ".a.png.new", incoming / "a.png")
        return decode(data, **kwargs)

    monkeypatch.setattr(assets.steps.raw_image, "decode_image", replace_then_decode)
    first = kseg_run(instance, incoming, tmp_path / "store")
    assert first.code == 0, first.err
    monkeypatch.undo()
    store = storage.store()
    raw = store.manifest(key, "raw_image").info
    assert raw["source_sha256"] == sha256_bytes(original)
    assert (raw["width"], raw["height"]) == (8, 6)
    np.testing.assert_array_equal(decode_png(store.read_bytes(key, "raw_image.png")), pattern(6, 8))
    records = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(SOURCE), asset_partitions=[key]), limit=1
    ).records
    assert records[0].asset_observation.tags["dagster/data_version"] == sha256_bytes(original)
    assert all_intact(store, key)
    # Next kseg run: the file's new bytes make it stale, and it is redone on them.
    second = kseg_run(instance, incoming, tmp_path / "store")
    assert second.code == 0 and "0 new, 1 stale, 0 up to date" in second.out
    raw = store.manifest(key, "raw_image").info
    assert raw["source_sha256"] == sha256_bytes((incoming / "a.png").read_bytes())
    assert (raw["width"], raw["height"]) == (4, 9)


def test_a_partition_key_collision_refuses_the_second_file(tmp_path: Path, monkeypatch) -> None:
    # Distinct paths have distinct keys (the tag hashes the exact path). Should two ever
    # collide (a 40-bit hash collision, simulated here), the second is refused, not merged.
    save(tmp_path, "a.png")
    save(tmp_path, "b.png")
    monkeypatch.setattr(assets.incoming, "partition_key_for", lambda rel: "same-0000000000")
    scan = assets.incoming.scan_incoming(tmp_path)
    assert [i.relpath for i in scan.images] == ["a.png"]
    assert [(r.relpath, r.reason) for r in scan.refused] == [
        ("b.png", "partition key same-0000000000 already used by a.png")
    ]


def test_nothing_is_unpickled_when_steps_read_their_inputs(
    instance, storage: KsegStorage, incoming: Path, monkeypatch
) -> None:
    key = save(incoming, "a.png")
    assert run_partition(instance, storage, key).success
    MEMO.clear()  # what the first run left in memory: the next run reads the store
    attempts = forbid_unpickling(monkeypatch)
    # A subset reads elbow_metrics, raw_image ... back from the store (Parquet, PNG, JSON)
    # with different settings, so it recomputes from them; then the report reads manifests.
    result = run_partition(
        instance, storage, key, config={"k_override": 3}, selection=list(IMAGE_ASSETS[3:])
    )
    assert result.success, attempts
    done = materialised(instance, result.run_id)
    assert set(done) == {(asset, key) for asset in IMAGE_ASSETS[3:]}
    assert all(metadata["cache"] == "miss" for metadata in done.values())
    assert done["chosen_k", key]["chosen_k"] == 3
    report = build_defs(storage, project()).resolve_job_def("segmentation_report_job")
    assert report.execute_in_process(instance=instance, run_config=QUIET).success
    assert attempts == []
