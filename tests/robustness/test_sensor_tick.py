"""Issue 5, requirement 2: bad and good files (and a link leaving the folder, a directory
named x.jpg, a name that is not UTF-8) dropped into the incoming folder at once, picked up
by the code location's ``incoming_images_sensor``, segmented by Dagster's automation; the
runs fail only the bad files' partitions, and the sensor goes on ticking. (Every case's
own outcome in Dagster: ``test_dagster_cases.py``.)

The daemon is played in process (``robustness_dagster.Daemon``): the sensor's tick is
applied as the daemon applies it (partitions, observations, cursor); automation is
evaluated by Dagster's own evaluator; the images it requests run as one backfill batch
(they are fewer than a batch's 50), and ``failed_batch_sensor`` splits the failed batch
into one run per image.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image
from robustness_cases import CASES, LIMIT, pattern
from robustness_dagster import Daemon, failures, pixel_limit

from assets.incoming import partition_key_for
from assets.names import IMAGE_ASSETS, RAW, REPORT, SETTINGS, SOURCE
from assets.sensors import SensorSettings
from assets.storage import KsegStorage

pytestmark = [
    pytest.mark.slow,
    # Dagster's own evaluator calls a beta parameter of AssetSelection.all internally.
    pytest.mark.filterwarnings("ignore:Parameter `include_sources`:dagster.BetaWarning"),
]

BY_ID = {case.id: case for case in CASES}
BAD = [BY_ID[i] for i in ("zero_byte", "text_as_jpg", "truncated_png", "decompression_bomb")]
GOOD = [BY_ID[i] for i in ("one_by_one", "rgba_transparent", "name_brackets", "same_name_nfd")]


def observed(data: dg.SensorExecutionData) -> set[tuple[str, str]]:
    """(asset, partition) of every observation a tick records."""
    return {(e.asset_key.to_user_string(), e.partition) for e in data.asset_events or []}


def test_a_tick_with_bad_and_good_files_then_the_next_ticks(
    instance, storage: KsegStorage, incoming: Path, tmp_path: Path
) -> None:
    daemon = Daemon(instance, storage, SensorSettings())
    assert daemon.evaluate() == {}  # automation was on before any file came
    for case in [*BAD, *GOOD]:
        case.write(incoming)
    (incoming / "x.jpg").mkdir()
    Image.fromarray(pattern(5, 7)).save(incoming / "x.jpg" / "inside.png")
    Image.fromarray(pattern(5, 7)).save(incoming / os.fsdecode(b"caf\xe9.png"), format="PNG")
    Image.fromarray(pattern(5, 7)).save(tmp_path / "outside.png")
    (incoming / "escape.png").symlink_to(tmp_path / "outside.png")
    settled = time.time() - 600  # the sensor waits for files younger than a few seconds
    for path in incoming.rglob("*"):
        os.utime(path, (settled, settled), follow_symlinks=False)

    # The tick registers every image and records its file and settings; it requests no
    # run itself (and the link and the non-UTF-8 name are reported, never read).
    data, report = daemon.tick()
    expected = {partition_key_for(c.name) for c in [*BAD, *GOOD]}
    expected.add(partition_key_for("x.jpg/inside.png"))
    assert set(daemon.partitions()) == expected
    assert list(data.run_requests or []) == []
    assert observed(data) == {(asset, key) for key in expected for asset in (SOURCE, SETTINGS)}
    assert {line.split(" (")[0] for line in report.skipped_new} == {"escape.png", "caf\ufffd.png"}

    # Automation requests every step of every new image (not the report yet) ...
    requested = daemon.evaluate()
    assert requested == {asset: expected for asset in IMAGE_ASSETS}
    # ... which run as one batch: it fails at raw_image on the bad files only, after
    # storing the good ones' raw_image; the batch's later steps do not run.
    bad_keys = {partition_key_for(c.name) for c in BAD}
    good = expected - bad_keys
    with pixel_limit(LIMIT):  # as in test_dagster_cases
        batch = daemon.run_batch(IMAGE_ASSETS, sorted(expected))
        assert not batch.success
        (failure,) = failures(instance, batch.run_id)
        assert failure.step == RAW and set(failure.partitions) == bad_keys
        assert {e.step_key for e in batch.all_events if e.is_step_start} == {RAW}
        # failed_batch_sensor splits it: one run per image; the good ones complete, each
        # bad one fails on its own, naming its file and the reason.
        singles = daemon.run_split(instance.get_run_by_id(batch.run_id))
    assert len(singles) == len(expected)
    failed: dict[str, str] = {}
    for result in singles:
        for own in failures(instance, result.run_id):
            assert len(own.partitions) == 1
            failed.update(own.partitions)
    assert set(failed) == bad_keys
    for case in BAD:
        message = failed[partition_key_for(case.name)]
        assert message.startswith(f"{incoming / case.name}: ") and case.error in message
    for asset in IMAGE_ASSETS:
        assert instance.get_materialized_partitions(dg.AssetKey(asset)) == good

    # Automation then rebuilds the report, and does not retry the bad files in a loop.
    assert daemon.evaluate() == {REPORT: {None}}
    assert daemon.run_report().success
    assert daemon.evaluate() == {}

    # The sensor keeps running: nothing changed, nothing recorded, no error ...
    data, report = daemon.tick()
    assert list(data.run_requests or []) == [] and not data.dynamic_partitions_requests
    assert observed(data) == set() and report.survey.hashed == 0
    assert daemon.evaluate() == {}
    # ... and a new bad file and a new good one are both taken on the next tick.
    (incoming / "later.png").write_bytes(b"")
    Image.fromarray(pattern(4, 4)).save(incoming / "later-good.png")
    for name in ("later.png", "later-good.png"):
        os.utime(incoming / name, (settled, settled))
    data, report = daemon.tick()
    later = {partition_key_for("later.png"), partition_key_for("later-good.png")}
    assert set(report.added) == later and set(daemon.partitions()) == expected | later
    assert observed(data) == {(asset, key) for key in later for asset in (SOURCE, SETTINGS)}
    assert daemon.evaluate() == {asset: later for asset in IMAGE_ASSETS}

    # Deleting files is a tick too: a bad file (nothing stored) and a good one (its
    # outputs go to the store's trash) lose their partitions; only a report run is asked.
    gone_bad, gone_good = BAD[0], GOOD[0]
    for case in (gone_bad, gone_good):
        (incoming / case.name).unlink()
    data, report = daemon.tick()
    bad_key, good_key = partition_key_for(gone_bad.name), partition_key_for(gone_good.name)
    assert set(report.deleted) == {bad_key, good_key} and set(report.trashed) == {good_key}
    assert set(daemon.partitions()) == (expected | later) - {bad_key, good_key}
    assert [r.asset_selection for r in data.run_requests] == [[dg.AssetKey(REPORT)]]
    assert not (storage.store().root / "images" / good_key).exists()
