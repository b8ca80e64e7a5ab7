"""Materialising the assets with a real instance into a temp store, on real images."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from dagster_helpers import (
    check_evaluations,
    materializations,
    run_job,
    store_mtimes,
    write_image,
)
from PIL import Image

from assets.definitions import defs
from assets.incoming import partition_key_for
from assets.names import IMAGE_ASSETS, REPORT
from assets.steps import chain_keys
from assets.storage import KsegStorage
from pipeline.render import decode_png
from pipeline.settings import SegmentSettings

PER_IMAGE_CHECKS = (
    "rows_match_pixels", "wcss_non_increasing", "k_in_range", "labels_match_image",
    "regions_contiguous", "regions_connected", "regions_match_table",
)  # fmt: skip


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _step_failures(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    return {
        e.step_key: e.step_failure_data.user_failure_data for e in result.get_step_failure_events()
    }


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
    assert "data:image/jpeg;base64," in preview and len(preview) < 250_000
    strip = found["segmented_image", key].metadata["neighbouring_k"].value
    assert "data:image/jpeg;base64," in strip and "set_image_settings" in strip
    stats = found["segment_stats", key].metadata
    assert stats["dagster/row_count"].value == chosen["chosen_k"].value
    regions = found["region_map", key].metadata
    n_regions = regions["n_regions"].value
    assert n_regions >= 1 and regions["stop_reason"].value in ("clear_stop", "no_clear_stop")
    assert "data:image/png;base64," in regions["merge_curve"].value
    assert regions["cluster_pieces"].value >= regions["after_folding"].value >= n_regions
    boundaries = found["region_boundaries", key].metadata
    assert "data:image/jpeg;base64," in boundaries["preview"].value
    assert found["region_stats", key].metadata["dagster/row_count"].value == n_regions

    checks = check_evaluations(result)
    assert {name for name, _ in checks} == set(PER_IMAGE_CHECKS)
    assert all(e.passed and e.partition == key for e in checks.values())

    folder = tmp_path / "store" / "images" / key
    labels = decode_png((folder / "label_map.png").read_bytes())
    assert labels.shape == (48, raw["width"].value)
    assert set(np.unique(labels)) == set(range(chosen["chosen_k"].value))
    region_map = decode_png((folder / "region_map.png").read_bytes())
    assert region_map.shape == labels.shape
    assert set(np.unique(region_map)) == set(range(n_regions))
    with Image.open(folder / "region_boundaries.jpg") as drawn:
        assert drawn.format == "JPEG" and drawn.size == (raw["width"].value, 48)
    table = pd.read_parquet(folder / "region_stats.parquet")
    assert table["pixel_count"].sum() == labels.size
    assert table["region"].tolist() == list(range(n_regions))
    curve = pd.read_parquet(folder / "region_merges.parquet")
    assert curve.loc[curve["chosen"], "regions"].tolist() == [n_regions]
    document = json.loads((folder / "chosen_k.json").read_text())
    assert document["chosen_k"] == chosen["chosen_k"].value
    expected = chain_keys(_sha256(incoming / "photos/astronaut.png"), SegmentSettings())
    for asset in IMAGE_ASSETS:
        manifest = json.loads((folder / f"{asset}.manifest.json").read_text())
        assert manifest["cache_key"] == found[asset, key].metadata["cache_key"].value
        assert manifest["cache_key"] == expected[asset]
    # One step per asset: the run timed each of them.
    assert {e.step_key for e in result.all_events if e.is_step_success} == set(IMAGE_ASSETS)
    assert not [e for e in result.all_events if "did not yield" in (e.message or "")]
    assert not list((tmp_path / "store").rglob("*.tmp"))
    # Nothing went through an IO manager: Dagster's storage holds compute logs only.
    stored = [p for p in (tmp_path / "dagster_home" / "storage").rglob("*") if p.is_file()]
    assert all("compute_logs" in p.parts for p in stored)


def test_a_table_unlike_the_declared_schema_reports_its_own(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path
) -> None:
    from PIL import Image

    from assets.incoming import partition_key_for

    # Wider than 65,535 pixels: positions are uint32, unlike the declared uint16.
    rng = np.random.default_rng(0)
    strip = rng.integers(0, 256, size=(2, 65_536, 3), dtype=np.uint8)
    Image.fromarray(strip).save(incoming / "strip.png")
    key = partition_key_for("strip.png")
    result = run_job(instance, storage, [key], selection=["raw_image", "pixel_features"])
    assert result.success
    schema = materializations(result)["pixel_features", key].metadata["dagster/column_schema"]
    types = {c.name: c.type for c in schema.schema.columns}
    assert types["x"] == types["y"] == "uint32"


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
            event.metadata["cache_key"]
            == materializations(first)[asset, partition].metadata["cache_key"]
        )
    assert all(e.passed for e in check_evaluations(second).values())


def test_a_batch_records_each_images_own_metadata_and_checks(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path
) -> None:
    names = {"a.png": "astronaut", "b.png": "coffee", "c.png": "chelsea"}
    keys = [write_image(incoming, rel, name) for rel, name in names.items()]
    result = run_job(instance, storage, keys)
    assert result.success
    found = materializations(result)
    for rel, key in zip(names, keys, strict=True):
        expected = chain_keys(_sha256(incoming / rel), SegmentSettings())
        for asset in IMAGE_ASSETS:
            assert found[asset, key].metadata["cache_key"].value == expected[asset]
        assert found["raw_image", key].metadata["source_path"].value == rel
    checks = check_evaluations(result)
    assert {(name, p) for name, p in checks} == {(n, k) for n in PER_IMAGE_CHECKS for k in keys}


def _segment_images_from_env() -> dg.JobDefinition:
    from assets.definitions import build_defs

    return build_defs().resolve_job_def("segment_images")


def test_a_step_that_failed_is_re_executed_alone_from_the_failure(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path, monkeypatch
) -> None:
    from assets.steps import elbow_metrics

    monkeypatch.setenv("KSEG_INCOMING_DIR", storage.incoming_dir)
    monkeypatch.setenv("KSEG_STORE_ROOT", storage.store_root)
    key = write_image(incoming, "a.png")
    instance.add_dynamic_partitions("images", [key])
    real = elbow_metrics.sweep

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device", "elbow_metrics.parquet")

    monkeypatch.setattr(elbow_metrics, "sweep", full_disk)
    job = dg.reconstructable(_segment_images_from_env)
    with dg.execute_job(job, instance=instance, tags={"dagster/partition": key}) as failed:
        assert not failed.success
        failures = {e.step_key for e in failed.all_events if e.is_step_failure}
        assert failures == {"elbow_metrics"}  # the failure names the step
        failure = next(e for e in failed.all_events if e.is_step_failure)
        message = failure.step_failure_data.user_failure_data.description
        assert message.startswith(f"elbow_metrics: {key}: cannot write to the store")
        assert "No space left on device" in message
        started = {e.step_key for e in failed.all_events if e.is_step_start}
        assert started == set(IMAGE_ASSETS[:3])  # nothing after the failed step ran
        run_id = failed.run_id
    monkeypatch.setattr(elbow_metrics, "sweep", real)
    # Re-execute from failure, as the UI does: only the failed step and those after it run.
    options = dg.ReexecutionOptions.from_failure(run_id, instance)
    tags = {"dagster/partition": key}  # the UI copies the parent run's tags; execute_job not
    with dg.execute_job(job, instance=instance, reexecution_options=options, tags=tags) as again:
        assert again.success
        ran = {e.step_key for e in again.all_events if e.is_step_success}
    assert ran == set(IMAGE_ASSETS[2:])


def test_a_subset_reads_its_inputs_from_the_store(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path
) -> None:
    key = write_image(incoming, "a.png")
    assert run_job(instance, storage, [key]).success
    result = run_job(
        instance,
        storage,
        [key],
        settings=SegmentSettings(min_strength=0.01),
        selection=["chosen_k", "label_map"],
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
    failure = _step_failures(result)["chosen_k"]
    assert "elbow_metrics is missing or damaged in the store" in failure.description


def test_a_bad_file_fails_only_its_partition(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path, tmp_path: Path
) -> None:
    good = write_image(incoming, "a.png")
    (incoming / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    bad = partition_key_for("b.jpg")
    keys = [good, bad]
    result = run_job(instance, storage, keys)
    assert not result.success  # a batch is all or nothing per step, as in Dagster
    failure = _step_failures(result)["raw_image"]
    assert str(incoming / "b.jpg") in failure.description
    assert "truncated or corrupt" in failure.description
    assert failure.metadata["failed"].value == 1 and failure.metadata["total"].value == 2
    assert not (tmp_path / "store" / "images" / bad).exists()
    assert (tmp_path / "store" / "images" / good / "raw_image.manifest.json").is_file()
    # Run image by image (the failed_batch_sensor's split), the good one completes.
    assert run_job(instance, storage, [good]).success
    assert not run_job(instance, storage, [bad]).success
    assert instance.get_materialized_partitions(dg.AssetKey("segment_stats")) == {good}


def test_a_missing_file_or_a_forged_key_fails_that_partition(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path, tmp_path: Path
) -> None:
    forged = "x-0000000000"
    result = run_job(instance, storage, [forged])
    assert not result.success
    failure = _step_failures(result)["raw_image"]
    assert "no image in the incoming folder has this partition key" in failure.description
    instance.add_dynamic_partitions("images", ["../escape"])
    result = run_job(instance, storage, ["../escape"], register=False)
    assert not result.success
    assert not (tmp_path / "escape").exists()


def test_checks_fail_on_deliberately_broken_outputs(
    instance: dg.DagsterInstance,
    storage: KsegStorage,
    incoming: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import assets.steps.segmentation as seg_module
    from pipeline.render import segment as real_segment

    def broken_segment(*args, **kwargs):
        result = real_segment(*args, **kwargs)
        labels = result.labels.copy()
        labels[labels == 0] = result.k  # a label outside 0..K-1, label 0 missing
        return type(result)(labels, result.colours, result.k, result.wcss)

    monkeypatch.setattr(seg_module, "segment", broken_segment)
    key = write_image(incoming, "a.png")
    result = run_job(instance, storage, [key])
    # The check blocks: the run fails at label_map, and the failure is visible.
    assert not result.success
    assert "label_map" in {e.step_key for e in result.get_step_failure_events()}
    checks = check_evaluations(result)
    assert not checks["labels_match_image", key].passed
    assert checks["k_in_range", key].passed
    assert ("label_map", key) in materializations(result)


def test_report_covers_every_registered_image(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path, tmp_path: Path
) -> None:
    keys = [write_image(incoming, "a.png"), write_image(incoming, "sub/b.png", "coffee")]
    assert run_job(instance, storage, keys).success
    result = run_job(instance, storage, [], job="segmentation_report_job")
    assert result.success
    meta = materializations(result)[REPORT, None].metadata
    assert meta["dagster/row_count"].value == 2 and meta["complete"].value == 2
    shown = {record.data["source_path"] for record in meta["report"].value.records}
    assert shown == {"a.png", "sub/b.png"}
    columns = {c.name: c.description for c in meta["dagster/column_schema"].schema.columns}
    assert all(columns.values()), columns  # every column of the file is described
    assert "data:image/png;base64," in meta["across_images"].value
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
        record = instance.fetch_observations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("source_image"), asset_partitions=[key]),
            limit=1,
        ).records[0]
        assert record.asset_observation.tags["dagster/data_version"] == _sha256(incoming / rel)
        assert record.asset_observation.metadata["path"].value == rel
        settings = instance.fetch_observations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("image_settings"), asset_partitions=[key]),
            limit=1,
        ).records[0]
        assert settings.asset_observation.metadata["settings"].value["k_max"] == 12


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


def test_an_object_store_incoming_folder_and_store_work_end_to_end(
    instance: dg.DagsterInstance,
) -> None:
    import io

    from PIL import Image
    from upath import UPath

    from assets.changes import survey
    from assets.settings import ProjectSettings

    incoming = UPath("memory://kseg-e2e-incoming")
    incoming.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(
        buffer, "PNG"
    )
    (incoming / "a.png").write_bytes(buffer.getvalue())
    storage = KsegStorage(incoming_dir=str(incoming), store_root="memory://kseg-e2e-store")
    found = survey(storage, instance, ProjectSettings(SegmentSettings()))
    assert found.new == [partition_key_for("a.png")]
    result = run_job(instance, storage, found.new)
    assert result.success
    assert UPath("memory://kseg-e2e-store/images").joinpath(found.new[0], "label_map.png").exists()
    incoming.fs.rm(incoming.path, recursive=True)
