"""Materialising the assets with a real instance into a temp store, on real images."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest
from dagster_helpers import (
    check_evaluations,
    materializations,
    run_job,
    store_mtimes,
    write_image,
)

from assets.cache import chain_keys, sha256_bytes
from assets.definitions import defs
from assets.incoming import partition_key_for
from assets.keys import IMAGE_ASSETS, REPORT
from assets.storage import KsegStorage
from pipeline.render import decode_png
from pipeline.settings import SegmentSettings

PER_IMAGE_CHECKS = ("rows_match_pixels", "wcss_non_increasing", "k_in_range", "labels_match_image")


def _stale(instance: dg.DagsterInstance, asset: str, partition: str) -> StaleStatus:
    resolver = CachingStaleStatusResolver(
        instance, defs.resolve_asset_graph(), LoadingContextForTest(instance)
    )
    return resolver.get_status(dg.AssetKey(asset), partition)


def test_every_asset_materialises_with_metadata_and_passing_checks(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path, tmp_path: Path
) -> None:
    key = write_image(incoming, "photos/astronaut.png")
    result = run_job(instance, storage, [key])
    assert result.success
    found = materializations(result)
    assert {asset for asset, _ in found} == set(IMAGE_ASSETS)
    assert all(partition == key for _, partition in found)

    raw = found["raw_image", key].metadata
    assert raw["source_path"].value == "photos/astronaut.png"
    assert raw["format"].value == "PNG" and raw["mode"].value == "RGB"
    assert raw["height"].value == 48 and raw["orientation"].value == 1
    assert raw["cache"].value == "miss"
    assert isinstance(raw["unique_colours"].value, int)
    features = found["pixel_features", key].metadata
    assert features["dagster/row_count"].value == 48 * raw["width"].value
    # The tables' column schemas are declared on the asset definitions; a
    # materialisation repeats one only when its table differs (none does here).
    declared = {
        spec.key.to_user_string(): spec.metadata.get("dagster/column_schema")
        for spec in defs.resolve_all_asset_specs()
    }
    assert [c.name for c in declared["pixel_features"].columns][:5] == ["x", "y", "r", "g", "b"]
    assert "wcss" in [c.name for c in declared["elbow_metrics"].columns]
    assert "n_components" in [c.name for c in declared["segment_stats"].columns]
    for asset in ("pixel_features", "elbow_metrics", "segment_stats"):
        assert "dagster/column_schema" not in found[asset, key].metadata, asset
    elbow = found["elbow_metrics", key].metadata
    assert len(elbow["wcss_curve"].value.records) == len(SegmentSettings().sweep_k_values)
    chosen = found["chosen_k", key].metadata
    assert isinstance(chosen["chosen_k"].value, int)
    assert isinstance(chosen["knee_strength"].value, float)
    assert isinstance(chosen["wcss_at_k"].value, float)
    assert chosen["reason"].value in ("elbow", "no_clear_elbow")
    assert "data:image/png;base64," in chosen["elbow_plot"].value
    preview = found["segmented_image", key].metadata["preview"].value
    assert "data:image/png;base64," in preview and len(preview) < 100_000
    stats = found["segment_stats", key].metadata
    assert stats["dagster/row_count"].value == chosen["chosen_k"].value

    checks = check_evaluations(result)
    assert {name for name, _ in checks} == set(PER_IMAGE_CHECKS)
    assert all(e.passed and e.partition == key for e in checks.values())

    folder = tmp_path / "store" / "images" / key
    labels = decode_png((folder / "label_map.png").read_bytes())
    assert labels.shape == (48, raw["width"].value)
    assert set(np.unique(labels)) == set(range(chosen["chosen_k"].value))
    document = json.loads((folder / "chosen_k.json").read_text())
    assert document["chosen_k"] == chosen["chosen_k"].value
    for asset in IMAGE_ASSETS:
        manifest = json.loads((folder / f"{asset}.manifest.json").read_text())
        assert manifest["cache_key"] == found[asset, key].tags["dagster/data_version"]
    assert not list((tmp_path / "store").rglob("*.tmp"))
    # Nothing went through an IO manager: Dagster's storage holds compute logs only.
    stored = [p for p in (tmp_path / "dagster_home" / "storage").rglob("*") if p.is_file()]
    assert all("compute_logs" in p.parts for p in stored)


def test_a_table_unlike_the_declared_schema_reports_its_own(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path
) -> None:
    key = write_image(incoming, "coffee.png", "coffee")
    result = run_job(
        instance,
        storage,
        [key],
        config={"features": "hsv"},
        selection=["raw_image", "pixel_features"],
    )
    assert result.success
    schema = materializations(result)["pixel_features", key].metadata["dagster/column_schema"]
    assert [c.name for c in schema.schema.columns][-3:] == ["hsv_h", "hsv_s", "hsv_v"]


def test_second_materialisation_is_a_cache_hit_and_writes_nothing(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path, tmp_path: Path
) -> None:
    keys = [write_image(incoming, "a.png"), write_image(incoming, "b.png", "coffee")]
    first = run_job(instance, storage, keys)
    assert first.success
    before = store_mtimes(tmp_path / "store")
    second = run_job(instance, storage, keys)
    assert second.success
    assert store_mtimes(tmp_path / "store") == before
    again = materializations(second)
    assert len(again) == len(IMAGE_ASSETS) * 2
    for (asset, partition), event in again.items():
        assert event.metadata["cache"].value == "hit", (asset, partition)
        assert (
            event.tags["dagster/data_version"]
            == materializations(first)[asset, partition].tags["dagster/data_version"]
        )
    assert all(e.passed for e in check_evaluations(second).values())


def test_a_batch_reports_each_partitions_own_data_version(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path
) -> None:
    names = {"a.png": "astronaut", "b.png": "coffee", "c.png": "chelsea"}
    keys = [write_image(incoming, rel, name) for rel, name in names.items()]
    result = run_job(instance, storage, keys)
    assert result.success
    found = materializations(result)
    for (rel, _), key in zip(names.items(), keys, strict=True):
        expected = chain_keys(sha256_bytes((incoming / rel).read_bytes()), SegmentSettings())
        for asset in IMAGE_ASSETS:
            assert found[asset, key].tags["dagster/data_version"] == expected[asset]
    for key in keys:
        for asset in IMAGE_ASSETS:
            assert _stale(instance, asset, key) == StaleStatus.FRESH


@pytest.mark.parametrize("batch", [False, True], ids=["one-image-run", "batch-run"])
def test_new_bytes_change_data_versions_and_mark_downstream_stale(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path, batch: bool
) -> None:
    key = write_image(incoming, "a.png")
    other = write_image(incoming, "z.png", "coffee")
    keys = [key, other] if batch else [key]
    first = materializations(run_job(instance, storage, keys))
    # The file changes; observing the source makes Dagster see a new version.
    write_image(incoming, "a.png", "chelsea")
    assert run_job(instance, storage, [key], job="observe_images").success
    assert _stale(instance, "raw_image", key) == StaleStatus.STALE
    if batch:
        assert _stale(instance, "raw_image", other) == StaleStatus.FRESH
    second = materializations(run_job(instance, storage, keys))
    for asset in IMAGE_ASSETS:
        old = first[asset, key].tags["dagster/data_version"]
        assert second[asset, key].tags["dagster/data_version"] != old, asset
        assert second[asset, key].metadata["cache"].value == "miss"
        assert _stale(instance, asset, key) == StaleStatus.FRESH
    if batch:
        assert all(second[a, other].metadata["cache"].value == "hit" for a in IMAGE_ASSETS)


def test_a_changed_upstream_marks_children_stale_until_they_rerun(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path
) -> None:
    key = write_image(incoming, "a.png")
    assert run_job(instance, storage, [key]).success
    # Only pixel_features is re-materialised with other settings: its children go stale.
    result = run_job(
        instance, storage, [key], config={"features": "rgb"}, selection=["pixel_features"]
    )
    assert result.success
    assert _stale(instance, "pixel_features", key) == StaleStatus.FRESH
    assert _stale(instance, "elbow_metrics", key) == StaleStatus.STALE
    assert _stale(instance, "raw_image", key) == StaleStatus.FRESH


def test_a_subset_reads_its_inputs_from_the_store(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path
) -> None:
    key = write_image(incoming, "a.png")
    assert run_job(instance, storage, [key]).success
    result = run_job(
        instance, storage, [key], config={"min_strength": 0.01}, selection=["chosen_k", "label_map"]
    )
    assert result.success
    found = materializations(result)
    assert set(found) == {("chosen_k", key), ("label_map", key)}
    assert found["chosen_k", key].metadata["cache"].value == "miss"


def test_a_subset_without_its_inputs_fails_clearly(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path
) -> None:
    key = write_image(incoming, "a.png")
    result = run_job(instance, storage, [key], selection=["chosen_k"])
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert "elbow_metrics is missing or damaged in the store" in failure.description


def test_a_bad_file_fails_only_its_partition(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path, tmp_path: Path
) -> None:
    good = write_image(incoming, "a.png")
    (incoming / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    bad = partition_key_for("b.jpg")
    keys = [good, bad]
    result = run_job(instance, storage, keys)
    assert not result.success
    found = materializations(result)
    assert {p for _, p in found} == {good}
    failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert str(incoming / "b.jpg") in failure.description
    assert "truncated or corrupt" in failure.description
    assert failure.metadata["failed"].value == 1
    assert not (tmp_path / "store" / "images" / bad).exists()
    assert instance.get_materialized_partitions(dg.AssetKey("segment_stats")) == {good}


def test_a_missing_file_or_a_forged_key_fails_that_partition(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path, tmp_path: Path
) -> None:
    forged = "x-0000000000"
    result = run_job(instance, storage, [forged])
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert "no image in the incoming folder has this partition key" in failure.description
    instance.add_dynamic_partitions("images", ["../escape"])
    result = run_job(instance, storage, ["../escape"], register=False)
    assert not result.success
    assert not (tmp_path / "escape").exists()


def test_invalid_settings_fail_before_any_compute(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path, tmp_path: Path
) -> None:
    key = write_image(incoming, "a.png")
    result = run_job(instance, storage, [key], config={"k_min": 8, "k_max": 3})
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert failure.description.startswith("invalid setting 'k_min'")
    assert failure.metadata["field"].value == "k_min"
    assert not (tmp_path / "store").exists()


def test_checks_fail_on_deliberately_broken_outputs(
    instance: dg.DagsterInstance,
    storage: KsegStorage,
    incoming: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import assets.segmentation_assets as seg_module
    from pipeline.render import segment as real_segment

    def broken_segment(*args, **kwargs):
        result = real_segment(*args, **kwargs)
        labels = result.labels.copy()
        labels[labels == 0] = result.k  # a label outside 0..K-1, label 0 missing
        return type(result)(labels, result.colours, result.segmented, result.k, result.wcss)

    monkeypatch.setattr(seg_module, "segment", broken_segment)
    key = write_image(incoming, "a.png")
    result = run_job(instance, storage, [key])
    assert result.success  # checks are not blocking: the run records them
    checks = check_evaluations(result)
    assert not checks["labels_match_image", key].passed
    assert checks["k_in_range", key].passed


def test_report_covers_every_registered_image(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path, tmp_path: Path
) -> None:
    keys = [write_image(incoming, "a.png"), write_image(incoming, "sub/b.png", "coffee")]
    assert run_job(instance, storage, keys).success
    result = run_job(instance, storage, [], job="segmentation_report_job")
    assert result.success
    meta = materializations(result)[REPORT, None].metadata
    assert meta["dagster/row_count"].value == 2 and meta["complete"].value == 2
    assert "sub/b.png" in meta["report"].value
    assert check_evaluations(result)["covers_every_image", None].passed
    table = pq.read_table(tmp_path / "store" / "report" / "segmentation_report.parquet")
    assert sorted(table.column("partition_key").to_pylist()) == sorted(keys)
    assert set(table.column("status").to_pylist()) == {"ok"}
    again = run_job(instance, storage, [], job="segmentation_report_job")
    assert materializations(again)[REPORT, None].metadata["cache"].value == "hit"
    # A registered image without outputs makes the coverage check fail.
    instance.add_dynamic_partitions("images", ["never-run-0000000000"])
    third = run_job(instance, storage, [], job="segmentation_report_job")
    assert third.success
    coverage = check_evaluations(third)["covers_every_image", None]
    assert not coverage.passed and "without" not in coverage.description
    assert "not fully segmented" in coverage.description


def test_sources_are_observed_per_partition(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path
) -> None:
    keys = [write_image(incoming, "a.png"), write_image(incoming, "b.png", "coffee")]
    result = run_job(instance, storage, keys, job="observe_images")
    assert result.success
    for rel, key in zip(("a.png", "b.png"), keys, strict=True):
        record = instance.get_latest_data_version_record(dg.AssetKey("source_image"), True, key)
        tags = record.event_log_entry.dagster_event.event_specific_data.asset_observation.tags
        assert tags["dagster/data_version"] == sha256_bytes((incoming / rel).read_bytes())


def test_an_fsspec_store_root_works_end_to_end(
    instance: dg.DagsterInstance, incoming: Path
) -> None:
    storage = KsegStorage(incoming_dir=str(incoming), store_root="memory://kseg-e2e")
    key = write_image(incoming, "a.png")
    assert run_job(instance, storage, [key]).success
    again = materializations(run_job(instance, storage, [key]))
    assert all(m.metadata["cache"].value == "hit" for m in again.values())


def test_the_default_storage_reads_the_environment(
    instance: dg.DagsterInstance, incoming: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from assets.definitions import build_defs

    monkeypatch.setenv("KSEG_INCOMING_DIR", str(incoming))
    monkeypatch.setenv("KSEG_STORE_ROOT", str(tmp_path / "env-store"))
    key = write_image(incoming, "a.png")
    instance.add_dynamic_partitions("images", [key])
    result = (
        build_defs()
        .resolve_job_def("segment_images")
        .execute_in_process(instance=instance, partition_key=key, raise_on_error=False)
    )
    assert result.success
    assert (tmp_path / "env-store" / "images" / key / "raw_image.png").is_file()
