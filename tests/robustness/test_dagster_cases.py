"""Issue 5 through Dagster: every case in one incoming folder, materialised by ``kseg run``
(assets.run.run_command, the project's own driver) in batches of 8 partitions per run,
against a real instance.

A batch is all or nothing per step (each step is its own Dagster op): a bad file fails
its batch's ``raw_image`` step with a ``dagster.Failure`` whose description and
``failed_partitions`` metadata name the file and the reason, after the step stored the
batch's other images; the batch's later steps are skipped, and ``kseg run`` runs that
batch again image by image, so the good files complete (``raw_image`` a cache hit) and
each bad one fails on its own. Refused names (a link leaving the folder, a name that is
not UTF-8) are reported without being read; nothing is written outside the storage root
and no pickle is ever stored.
"""

from __future__ import annotations

import hashlib
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
    is_batch,
    kseg_run,
    materialised,
    pickled_files,
    pixel_limit,
    run_partitions,
    started_steps,
)
from robustness_util import tree_snapshot

from assets.incoming import partition_key_for
from assets.names import IMAGE_ASSETS, PARTITIONS_NAME, RAW, REPORT
from assets.steps import chain_keys
from assets.storage import Store
from pipeline.render import decode_png
from pipeline.settings import SegmentSettings

NOT_UTF8 = os.fsdecode(b"latin1-caf\xe9.png")
NOT_UTF8_SHOWN = "latin1-caf\ufffd.png"  # how kseg names it (U+FFFD for the bad byte)
INSIDE_DIR = "x.jpg/inside.png"  # an image inside a directory named x.jpg
BATCH = 8


@dataclass
class Backfill:
    base: Path
    incoming: Path
    store: Store
    home: Path
    instance: dg.DagsterInstance
    run: KsegRun
    runs: list[dg.DagsterRun]  # every segment_images run, oldest first
    batches: list[dg.DagsterRun]  # the runs over a range of partitions
    singles: list[dg.DagsterRun]  # the runs of one image (a failed batch, split)
    failures: dict[str, list[Failure]]  # run id -> its step failures
    materialised: dict[tuple[str, str], list[dict]]  # (asset, partition) -> metadata, in order
    materialised_by_run: dict[str, dict[tuple[str, str], dict]]
    started: dict[str, set[str]]  # run id -> the steps it started
    partitions_of_run: dict[str, list[str]]
    before: dict
    after: dict

    def batch_of(self, key: str) -> dg.DagsterRun:
        (run,) = [r for r in self.batches if key in self.partitions_of_run[r.run_id]]
        return run

    def single_of(self, key: str) -> dg.DagsterRun:
        (run,) = [r for r in self.singles if self.partitions_of_run[r.run_id] == [key]]
        return run

    def failure(self, run: dg.DagsterRun, key: str) -> tuple[str, Failure]:
        """The error of ``key`` in ``run``, and the one step failure that lists it."""
        (found,) = [f for f in self.failures[run.run_id] if key in f.partitions]
        return found.partitions[key], found


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
    # The pixel limit is a constant of the code location (part of raw_image's cache
    # key); lowered here so that a small real image is "above the configured limit".
    with pixel_limit(LIMIT), dg.instance_for_test(temp_dir=str(home)) as instance:
        run = kseg_run(instance, incoming, base / "store", batch_size=BATCH)
        runs = [r for r in reversed(instance.get_runs()) if r.job_name == "segment_images"]
        done: dict[tuple[str, str], list[dict]] = {}
        by_run = {}
        for r in runs:
            by_run[r.run_id] = materialised(instance, r.run_id)
            for where, metadata in by_run[r.run_id].items():
                done.setdefault(where, []).append(metadata)
        after = tree_snapshot(base, skip=(base / "store", home))
        yield Backfill(
            base=base,
            incoming=incoming,
            store=Store(base / "store"),
            home=home,
            instance=instance,
            run=run,
            runs=runs,
            batches=[r for r in runs if is_batch(r)],
            singles=[r for r in runs if not is_batch(r)],
            failures={r.run_id: failures(instance, r.run_id) for r in runs},
            materialised=done,
            materialised_by_run=by_run,
            started={r.run_id: started_steps(instance, r.run_id) for r in runs},
            partitions_of_run={r.run_id: run_partitions(instance, r) for r in runs},
            before=before,
            after=after,
        )


def key_of(case: Case) -> str:
    return partition_key_for(case.name)


BAD_KEYS = {key_of(c) for c in BAD}


def test_the_backfill_ran_in_batches_and_split_only_the_failed_ones(backfill: Backfill) -> None:
    registered = backfill.instance.get_dynamic_partitions(PARTITIONS_NAME)
    # Every case plus the image inside x.jpg; not the link nor the non-UTF-8 name.
    assert len(registered) == len(CASES) + 1
    covered = backfill.partitions_of_run
    assert len(backfill.batches) == -(-len(registered) // BATCH)
    assert all(len(covered[r.run_id]) <= BATCH for r in backfill.batches)
    assert sorted(p for r in backfill.batches for p in covered[r.run_id]) == sorted(registered)
    # A batch fails exactly when it holds a bad file; only failed batches are split, each
    # into one run per image, right after it.
    expected_order = []
    for batch in backfill.batches:
        members = covered[batch.run_id]
        assert (batch.status == dg.DagsterRunStatus.FAILURE) == bool(BAD_KEYS & set(members))
        expected_order.append([batch.run_id])
        if batch.status == dg.DagsterRunStatus.FAILURE:
            expected_order[-1] += [backfill.single_of(key).run_id for key in members]
    assert [r.run_id for r in backfill.runs] == [i for ids in expected_order for i in ids]
    for single in backfill.singles:
        (key,) = covered[single.run_id]
        assert (single.status == dg.DagsterRunStatus.FAILURE) == (key in BAD_KEYS)


@pytest.mark.parametrize("case", case_params(BAD))
def test_bad_file_fails_only_its_partition(backfill: Backfill, case: Case) -> None:
    key = key_of(case)
    path = backfill.incoming / case.name
    # On its own (the failed batch split image by image), it fails raw_image, naming the
    # file and the reason, and nothing else.
    single = backfill.single_of(key)
    error, failure = backfill.failure(single, key)
    assert error.startswith(f"{path}: ") and case.error in error
    assert backfill.failures[single.run_id] == [failure]
    assert failure.step == RAW and failure.description == f"{RAW}: {error}"
    assert failure.partitions == {key: error}
    assert (failure.metadata["failed"], failure.metadata["total"]) == (1, 1)
    # Its batch's raw_image step failed the same way, listing only bad partitions ...
    batch = backfill.batch_of(key)
    members = backfill.partitions_of_run[batch.run_id]
    in_batch, batch_failure = backfill.failure(batch, key)
    assert in_batch == error and error in batch_failure.description
    assert backfill.failures[batch.run_id] == [batch_failure] and batch_failure.step == RAW
    assert set(batch_failure.partitions) <= BAD_KEYS
    assert batch_failure.metadata["failed"] == len(batch_failure.partitions)
    assert batch_failure.metadata["total"] == len(members)
    # ... after storing the batch's other images (a failed step records no materialisation:
    # all or nothing); its later steps never started.
    assert backfill.started[batch.run_id] == {RAW}
    assert backfill.materialised_by_run[batch.run_id] == {}
    others = set(members) - set(batch_failure.partitions)
    assert others, "the batch had no good file"
    # Nothing of it was materialised or stored, in any run ...
    assert not [a for a, p in backfill.materialised if p == key]
    assert not (backfill.store.root / "images" / key).exists()
    # ... while every other partition of its batch completed in its own run, reusing the
    # raw_image the batch stored.
    for other in others:
        own = backfill.materialised_by_run[backfill.single_of(other).run_id]
        assert set(own) == {(asset, other) for asset in IMAGE_ASSETS}
        assert own[RAW, other]["cache"] == "hit"
        assert all(own[asset, other]["cache"] == "miss" for asset in IMAGE_ASSETS[1:])
    # kseg run said it in one line (once, although two runs failed on it).
    assert backfill.run.error_lines.count(f"kseg run: error: {error}") == 1


@pytest.mark.parametrize("case", case_params(GOOD))
def test_good_file_is_processed(backfill: Backfill, case: Case) -> None:
    key = key_of(case)
    store = backfill.store
    assert not [f for fs in backfill.failures.values() for f in fs if key in f.partitions]
    # Every step was materialised once and computed once: in its batch, or, if the batch
    # failed (on another file), in its own run, where raw_image is a cache hit on what
    # the failed batch stored.
    split = BAD_KEYS & set(backfill.partitions_of_run[backfill.batch_of(key).run_id])
    for asset in IMAGE_ASSETS:
        (metadata,) = backfill.materialised[asset, key]
        assert metadata["cache"] == ("hit" if split and asset == RAW else "miss")
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
    # The cache key logged for each asset is the one this file's content gives.
    source = (backfill.incoming / case.name).read_bytes()
    with pixel_limit(LIMIT):
        expected = chain_keys(hashlib.sha256(source).hexdigest(), SegmentSettings())
    for asset in IMAGE_ASSETS:
        assert backfill.materialised[asset, key][0]["cache_key"] == expected[asset]
        assert store.manifest(key, asset).cache_key == expected[asset]


def test_kseg_run_prints_one_line_per_bad_or_refused_file(backfill: Backfill) -> None:
    run = backfill.run
    assert run.code == 1
    assert "Traceback" not in run.err
    refused = {
        f"kseg run: error: {backfill.incoming / 'escape.png'}: symbolic link leads outside "
        "the incoming folder",
        f"kseg run: error: {backfill.incoming / NOT_UTF8_SHOWN}: file name is not valid UTF-8",
    }
    assert refused <= set(run.error_lines)
    assert len(run.error_lines) == len(BAD) + len(refused)
    assert all(line.startswith("kseg run: error: ") for line in run.error_lines)
    assert (
        f"processed {len(CASES) + 1} image(s) in {len(backfill.runs)} run(s), "
        f"{len(BAD) + len(refused)} error(s), 0 failed check(s)"
    ) in run.out
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
