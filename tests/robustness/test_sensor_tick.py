"""Issue 5, requirement 2: bad and good files (and a link leaving the folder, a directory
named x.jpg, a name that is not UTF-8) dropped into the incoming folder at once, picked up
by the code location's ``incoming_images_sensor``; the requested runs fail only the bad
files' partitions, and the sensor goes on ticking. (Every case's own outcome in Dagster:
``test_dagster_cases.py``.)
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image
from robustness_cases import CASES, LIMIT, pattern
from robustness_dagster import QUIET, failures

from assets.cache import DECODE_SETTINGS
from assets.definitions import build_defs
from assets.incoming import partition_key_for
from assets.keys import IMAGE_ASSETS, PARTITIONS_NAME
from assets.sensors import SensorSettings, build_incoming_images_sensor
from assets.storage import KsegStorage

pytestmark = pytest.mark.slow

BY_ID = {case.id: case for case in CASES}
BAD = [BY_ID[i] for i in ("zero_byte", "text_as_jpg", "truncated_png", "decompression_bomb")]
GOOD = [BY_ID[i] for i in ("one_by_one", "rgba_transparent", "name_brackets", "same_name_nfd")]


def tick(defs: dg.Definitions, instance, storage: KsegStorage, cursor: str | None):
    """One evaluation of the sensor, applied as the daemon applies it."""
    # The code location's sensor, built with at most 2 runs per tick (fewer, bigger runs).
    sensor = build_incoming_images_sensor(SensorSettings(max_runs=2))
    # A context made from an instance ref opens its own instance: close it with the
    # tick, or it lingers and breaks later tests ("undefined DagsterInstance weakref").
    with dg.build_sensor_context(
        instance=instance,
        instance_ref=instance.get_ref(),
        cursor=cursor,
        definitions=defs,
        resources={"storage": storage},
    ) as context:
        data = sensor.evaluate_tick(context)
    for request in data.dynamic_partitions_requests or []:
        assert isinstance(request, dg.AddDynamicPartitionsRequest)
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return list(data.run_requests or []), data.cursor


def test_a_tick_with_bad_and_good_files_then_the_next_ticks(
    instance, storage: KsegStorage, incoming: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setitem(DECODE_SETTINGS, "max_pixels", LIMIT)  # as in test_dagster_cases
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

    defs = build_defs(storage)
    requests, cursor = tick(defs, instance, storage, None)
    registered = list(instance.get_dynamic_partitions(PARTITIONS_NAME))
    expected = {partition_key_for(c.name) for c in [*BAD, *GOOD]}
    expected.add(partition_key_for("x.jpg/inside.png"))
    assert set(registered) == expected  # not the link, not the non-UTF-8 name

    job = defs.resolve_job_def("segment_images")
    failed: dict[str, str] = {}
    for request in requests:
        result = job.execute_in_process(
            run_config=QUIET,
            instance=instance,
            partition_key=request.partition_key,
            tags={k: v for k, v in request.tags.items() if not k.startswith("dagster/partition")},
            raise_on_error=False,
        )
        for failure in failures(instance, result.run_id):
            failed.update(failure.partitions)
    assert set(failed) == {partition_key_for(c.name) for c in BAD}
    for case in BAD:
        message = failed[partition_key_for(case.name)]
        assert message.startswith(f"{incoming / case.name}: ") and case.error in message
    good = expected - set(failed)
    for asset in IMAGE_ASSETS:
        assert instance.get_materialized_partitions(dg.AssetKey(asset)) == good

    # The sensor keeps running: nothing changed, nothing requested, no error ...
    requests, cursor = tick(defs, instance, storage, cursor)
    assert requests == []
    # ... and a new bad file and a new good one are both taken on the next tick.
    (incoming / "later.png").write_bytes(b"")
    Image.fromarray(pattern(4, 4)).save(incoming / "later-good.png")
    for name in ("later.png", "later-good.png"):
        os.utime(incoming / name, (settled, settled))
    requests, cursor = tick(defs, instance, storage, cursor)
    requested = {r.partition_key for r in requests}  # two files, two single-partition runs
    assert requested == {partition_key_for("later.png"), partition_key_for("later-good.png")}
