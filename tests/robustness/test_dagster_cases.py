"""Issue 5 through Dagster: every case in one incoming folder, materialised by ``kseg run``
(assets.run.run_command, the project's own driver) in batches of 8 partitions per run,
against a real instance.

Bad files fail only their own partition, with a ``dagster.Failure`` whose description and
``failed_partitions`` metadata name the file and the reason; the good files of the same
runs are materialised; refused names (a link leaving the folder, a name that is not
UTF-8) are reported without being read; nothing is written outside the storage root and
no pickle is ever stored.
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image
from robustness_cases import BAD, CASES, GOOD, LIMIT, NFC_NAME, NFD_NAME, Case, case_params, pattern
from robustness_dagster import (
    Failure,
    KsegRun,
    all_intact,
    failures,
    kseg_run,
    materialised,
    pickled_files,
    run_partitions,
)
from robustness_util import tree_snapshot

from assets.cache import DECODE_SETTINGS, chain_keys, sha256_bytes
from assets.incoming import partition_key_for
from assets.keys import IMAGE_ASSETS, PARTITIONS_NAME, REPORT
from assets.store import Store
from pipeline.render import decode_png
from pipeline.settings import SegmentSettings

NOT_UTF8 = os.fsdecode(b"latin1-caf\xe9.png")
INSIDE_DIR = "x.jpg/inside.png"  # an image inside a directory named x.jpg


@dataclass
class Backfill:
    base: Path
    incoming: Path
    store: Store
    home: Path
    instance: dg.DagsterInstance
    run: KsegRun
    runs: list[dg.DagsterRun]
    failures: dict[str, tuple[str, Failure]]  # partition -> (its error, the run's Failure)
    materialised: dict[tuple[str, str], dict]  # (asset, partition) -> metadata
    partitions_of_run: dict[str, list[str]]
    before: dict
    after: dict


@pytest.fixture(scope="module")
def backfill(tmp_path_factory) -> Backfill:
    base = tmp_path_factory.mktemp("backfill")
    incoming = base / "incoming"
    for case in CASES:
        case.write(incoming)
    (incoming / "x.jpg").mkdir()
    Image.fromarray(pattern(5, 7)).save(incoming / INSIDE_DIR)
    Image.fromarray(pattern(5, 7)).save(incoming / NOT_UTF8, format="PNG")
    outside = base / "outside.png"
    Image.fromarray(pattern(5, 7)).save(outside)
    (incoming / "escape.png").symlink_to(outside)
    home = base / "home"
    home.mkdir()
    before = tree_snapshot(base)
    with pytest.MonkeyPatch.context() as patch:
        # The pixel limit is a constant of the code location (part of raw_image's cache
        # key); lowered here so that a small real image is "above the configured limit".
        patch.setitem(DECODE_SETTINGS, "max_pixels", LIMIT)
        with dg.instance_for_test(temp_dir=str(home)) as instance:
            run = kseg_run(instance, incoming, base / "store", batch_size=8)
            runs = [r for r in instance.get_runs() if r.job_name == "segment_images"]
            failed: dict[str, tuple[str, Failure]] = {}
            done: dict[tuple[str, str], dict] = {}
            covered = {}
            for r in runs:
                covered[r.run_id] = run_partitions(instance, r)
                done.update(materialised(instance, r.run_id))
                for failure in failures(instance, r.run_id):
                    for partition, error in failure.partitions.items():
                        failed[partition] = (error, failure)
            after = tree_snapshot(base, skip=(base / "store", home))
            yield Backfill(
                base=base,
                incoming=incoming,
                store=Store(base / "store"),
                home=home,
                instance=instance,
                run=run,
                runs=runs,
                failures=failed,
                materialised=done,
                partitions_of_run=covered,
                before=before,
                after=after,
            )


def key_of(case: Case) -> str:
    return partition_key_for(case.name)


def test_the_backfill_ran_in_several_batches(backfill: Backfill) -> None:
    registered = backfill.instance.get_dynamic_partitions(PARTITIONS_NAME)
    # Every case plus the image inside x.jpg; not the link nor the non-UTF-8 name.
    assert len(registered) == len(CASES) + 1
    assert len(backfill.runs) == -(-len(registered) // 8)
    assert sorted(p for ps in backfill.partitions_of_run.values() for p in ps) == sorted(registered)


@pytest.mark.parametrize("case", case_params(BAD))
def test_bad_file_fails_only_its_partition(backfill: Backfill, case: Case) -> None:
    key = key_of(case)
    path = backfill.incoming / case.name
    error, failure = backfill.failures[key]
    assert error.startswith(f"{path}: ") and case.error in error
    # The run's Failure names this file and reason, and lists only the bad partitions.
    assert error in failure.description
    assert set(failure.partitions) <= {key_of(c) for c in BAD}
    assert failure.metadata["failed"] == len(failure.partitions)
    # Nothing of it was materialised or stored ...
    assert not [a for a, p in backfill.materialised if p == key]
    assert not (backfill.store.root / "images" / key).exists()
    # ... while every other partition of the same run was.
    others = set(backfill.partitions_of_run[failure.run_id]) - set(failure.partitions)
    assert others, "the batch had no good file"
    for other in others:
        assert all((asset, other) in backfill.materialised for asset in IMAGE_ASSETS)
    # kseg run said it in one line.
    assert f"kseg run: error: {error}" in backfill.run.error_lines


@pytest.mark.parametrize("case", case_params(GOOD))
def test_good_file_is_processed(backfill: Backfill, case: Case) -> None:
    key = key_of(case)
    store = backfill.store
    assert key not in backfill.failures
    for asset in IMAGE_ASSETS:
        assert backfill.materialised[asset, key]["cache"] == "miss"
    assert all_intact(store, key)
    raw = store.manifest(key, "raw_image").info
    assert (raw["width"], raw["height"]) == case.size
    assert raw["source_path"] == case.name
    for note in case.notes:
        assert note in raw["notes"]
    if case.n_colours is not None:
        assert raw["unique_colours"] == case.n_colours
    chosen = store.manifest(key, "chosen_k").info["chosen_k"]
    assert 1 <= chosen <= raw["unique_colours"]
    if case.k is not None:
        assert chosen == case.k
    if case.pixels is not None:
        case.pixels(decode_png(store.read_bytes(key, "raw_image.png")))
    labels = decode_png(store.read_bytes(key, "label_map.png"))
    assert labels.shape == (raw["height"], raw["width"])
    # The data version logged for each asset is the cache key of this file's content.
    source = (backfill.incoming / case.name).read_bytes()
    settings = SegmentSettings()
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(DECODE_SETTINGS, "max_pixels", LIMIT)
        expected = chain_keys(sha256_bytes(source), settings)
    for asset in IMAGE_ASSETS:
        assert backfill.materialised[asset, key]["cache_key"] == expected[asset]


def test_kseg_run_prints_one_line_per_bad_or_refused_file(backfill: Backfill) -> None:
    run = backfill.run
    assert run.code == 1
    assert "Traceback" not in run.err
    refused = {
        f"kseg run: error: {backfill.incoming / 'escape.png'}: symbolic link leads outside "
        "the incoming folder",
        f"kseg run: error: {backfill.incoming / 'latin1-caf�.png'}: file name is not valid UTF-8",
    }
    assert refused <= set(run.error_lines)
    assert len(run.error_lines) == len(BAD) + len(refused)
    assert f"processed {len(CASES) + 1} image(s) in {len(backfill.runs)} run(s)" in run.out
    assert "kseg run: report " in run.out


def test_two_names_for_one_text_get_two_keys(backfill: Backfill) -> None:
    # "café.png" composed and decomposed: different files, so different keys and outputs.
    assert NFC_NAME != NFD_NAME and unicodedata.normalize("NFC", NFD_NAME) == NFC_NAME
    nfc, nfd = partition_key_for(NFC_NAME), partition_key_for(NFD_NAME)
    assert nfc != nfd
    registered = backfill.instance.get_dynamic_partitions(PARTITIONS_NAME)
    assert {nfc, nfd} <= set(registered)
    assert len(set(registered)) == len(registered)
    store = backfill.store
    np.testing.assert_array_equal(decode_png(store.read_bytes(nfc, "raw_image.png")), pattern(6, 8))
    np.testing.assert_array_equal(decode_png(store.read_bytes(nfd, "raw_image.png")), pattern(8, 6))


def test_a_link_leaving_the_folder_is_refused_unread(backfill: Backfill) -> None:
    registered = set(backfill.instance.get_dynamic_partitions(PARTITIONS_NAME))
    assert partition_key_for("escape.png") not in registered
    # The target's bytes reached no output: no raw image anywhere has them.
    outside = pattern(5, 7)
    inside_key = partition_key_for(INSIDE_DIR)  # the same picture, legitimately inside
    for folder in (backfill.store.root / "images").iterdir():
        if folder.name != inside_key:
            raw = decode_png((folder / "raw_image.png").read_bytes())
            assert raw.shape != outside.shape or not np.array_equal(raw, outside)


def test_a_directory_named_like_an_image_is_a_folder(backfill: Backfill) -> None:
    registered = set(backfill.instance.get_dynamic_partitions(PARTITIONS_NAME))
    assert partition_key_for("x.jpg") not in registered
    assert all_intact(backfill.store, partition_key_for(INSIDE_DIR))


def test_name_that_is_not_utf8_is_refused(backfill: Backfill) -> None:
    registered = backfill.instance.get_dynamic_partitions(PARTITIONS_NAME)
    assert all(key.isascii() for key in registered)
    assert len(registered) == len(CASES) + 1  # the non-UTF-8 file is not among them


def test_keys_and_store_folders_use_the_safe_alphabet(backfill: Backfill) -> None:
    import re

    registered = backfill.instance.get_dynamic_partitions(PARTITIONS_NAME)
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9-]*[a-z0-9]", key) for key in registered)
    folders = {p.name for p in (backfill.store.root / "images").iterdir()}
    assert folders == {key_of(c) for c in GOOD} | {partition_key_for(INSIDE_DIR)}


def test_nothing_is_written_outside_the_store_and_inputs_are_untouched(backfill: Backfill) -> None:
    # The base folder holds the incoming folder, the store, the instance and the link's
    # target: outside the store root and the instance nothing changed, not even mtimes.
    unchanged = {path: value for path, value in backfill.before.items() if path != "home"}
    after = {p: v for p, v in backfill.after.items() if p not in ("home", "store")}
    assert after == unchanged
    top = {p.name for p in backfill.store.root.iterdir()}
    assert top == {"images", "locks", "report"}


def test_no_pickles_in_the_store_or_the_instance(backfill: Backfill) -> None:
    assert pickled_files(backfill.store.root, backfill.home) == []
    # No IO manager stored any asset output under the instance's storage folder.
    storage = Path(backfill.instance.storage_directory())
    files = [p for p in storage.rglob("*") if p.is_file()]
    assert files, "the instance stored nothing at all?"
    outputs = [p for p in files if "compute_logs" not in p.parts and p.suffix != ".db"]
    assert outputs == [], outputs
    assert not [a for a in (*IMAGE_ASSETS, REPORT) if (storage / a).exists()]


def test_the_report_lists_every_image(backfill: Backfill) -> None:
    import pyarrow.parquet as pq

    report = pq.read_table(backfill.store.root / "report" / "segmentation_report.parquet")
    statuses = dict(
        zip(*report.select(["partition_key", "status"]).to_pydict().values(), strict=True)
    )
    assert set(statuses) == set(backfill.instance.get_dynamic_partitions(PARTITIONS_NAME))
    for case in CASES:
        assert statuses[key_of(case)] == ("ok" if case.ok else "missing")
