"""``kseg run`` (assets.run.run_command) against a temp incoming folder and a real instance."""

from __future__ import annotations

import io
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
from dagster_helpers import store_mtimes, write_image

from assets.instance import open_instance, project_home
from assets.names import IMAGE_ASSETS
from assets.partitions import batches
from assets.run import run_command
from assets.settings import ProjectSettings
from pipeline.settings import SegmentSettings


def _run(
    incoming: Path,
    tmp_path: Path,
    instance: dg.DagsterInstance,
    all_: bool = False,
    environ: dict | None = None,
):
    out, err = io.StringIO(), io.StringIO()
    code = run_command(
        str(incoming),
        all_,
        store_root=str(tmp_path / "store"),
        instance=instance,
        environ=environ or {},
        out=out,
        err=err,
    )
    return code, out.getvalue(), err.getvalue()


def _job_runs(instance: dg.DagsterInstance, job: str) -> list[dg.DagsterRun]:
    return [r for r in instance.get_runs() if r.job_name == job]


def test_kseg_run_materialises_every_output_and_records_runs(
    incoming: Path, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    keys = [write_image(incoming, "a.png"), write_image(incoming, "nested/dir/b.jpg", "coffee")]
    code, out, err = _run(incoming, tmp_path, instance)
    assert code == 0, err
    assert err == ""
    assert "2 image(s)" in out and "2 new" in out
    assert set(instance.get_dynamic_partitions("images")) == set(keys)
    for asset in IMAGE_ASSETS:
        assert instance.get_materialized_partitions(dg.AssetKey(asset)) == set(keys), asset
    for key in keys:
        folder = tmp_path / "store" / "images" / key
        for name in (
            "raw_image.png",
            "pixel_features.parquet",
            "elbow_metrics.parquet",
            "chosen_k.json",
            "segmented_image.png",
            "label_map.png",
            "segment_stats.parquet",
        ):
            assert (folder / name).is_file(), name
    report = pq.read_table(tmp_path / "store" / "report" / "segmentation_report.parquet")
    assert sorted(report.column("partition_key").to_pylist()) == sorted(keys)
    runs = _job_runs(instance, "segment_images")
    assert len(runs) == 1 and runs[0].status == dg.DagsterRunStatus.SUCCESS
    assert runs[0].tags["dagster/asset_partition_range_start"] in keys
    assert _job_runs(instance, "segmentation_report_job")


def test_a_second_run_does_nothing_and_all_hits_the_cache(
    incoming: Path, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    write_image(incoming, "a.png")
    assert _run(incoming, tmp_path, instance)[0] == 0
    before = store_mtimes(tmp_path / "store" / "images")
    code, out, _ = _run(incoming, tmp_path, instance)
    assert code == 0
    assert "0 new, 0 stale, 1 up to date" in out and "processed 0 image(s) in 0 run(s)" in out
    assert len(_job_runs(instance, "segment_images")) == 1
    code, out, _ = _run(incoming, tmp_path, instance, all_=True)
    assert code == 0 and "processed 1 image(s) in 1 run(s)" in out
    assert store_mtimes(tmp_path / "store" / "images") == before
    last = _job_runs(instance, "segment_images")[0]
    records = instance.fetch_materializations(dg.AssetKey("chosen_k"), limit=1).records
    assert records[0].run_id == last.run_id
    assert records[0].asset_materialization.metadata["cache"].value == "hit"


def test_changed_and_new_files_are_picked_up(
    incoming: Path, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    write_image(incoming, "a.png")
    write_image(incoming, "b.png", "coffee")
    assert _run(incoming, tmp_path, instance)[0] == 0
    write_image(incoming, "a.png", "chelsea")
    write_image(incoming, "c.png", "rocket")
    code, out, _ = _run(incoming, tmp_path, instance)
    assert code == 0
    assert "3 image(s)" in out and "1 new, 1 stale, 1 up to date" in out


def test_a_bad_file_prints_one_line_and_the_rest_is_processed(
    incoming: Path, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    good = write_image(incoming, "a.png")
    (incoming / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (incoming / "escape.png").symlink_to(tmp_path / "outside.png")
    write_image(tmp_path, "outside.png")
    code, out, err = _run(incoming, tmp_path, instance)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    assert any(
        str(incoming / "broken.png") in line and "kseg run: error:" in line for line in lines
    )
    assert any("escape.png: symbolic link leads outside" in line for line in lines)
    assert "Traceback" not in err
    # The batch failed at the bad file; run image by image, the good one completed.
    assert instance.get_materialized_partitions(dg.AssetKey("segment_stats")) == {good}
    assert "kseg run: report" in out and "in 3 run(s)" in out


def test_a_missing_incoming_folder_is_a_usage_error(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    code, _, err = _run(tmp_path / "nope", tmp_path, instance)
    assert code == 2 and "does not exist" in err


def test_invalid_settings_are_refused_before_anything_runs(
    incoming: Path, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    write_image(incoming, "a.png")
    code, _, err = _run(
        incoming, tmp_path, instance, environ={"KSEG_FEATURES": "xyz", "KSEG_K_MAX": "1"}
    )
    assert code == 2
    assert "KSEG_K_MAX (k_max)" in err and "KSEG_FEATURES (features)" in err
    assert len(err.strip().splitlines()) == 1
    assert not instance.get_runs()


def test_project_and_image_settings_decide_and_a_failed_check_is_an_error(
    incoming: Path, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    from assets.settings import update_own_settings
    from assets.storage import Store

    a = write_image(incoming, "a.png")
    b = write_image(incoming, "b.png", "coffee")
    instance.add_dynamic_partitions("images", [a, b])
    store = Store(tmp_path / "store")
    project = ProjectSettings(SegmentSettings(k_override=3))
    update_own_settings(store, project, [b], {"k_override": 5}, updated_by="test")
    code, _, err = _run(incoming, tmp_path, instance, environ={"KSEG_K": "3"})
    assert code == 0, err
    assert store.manifest(a, "chosen_k").info["chosen_k"] == 3
    assert store.manifest(b, "chosen_k").info["chosen_k"] == 5
    # A label map forged consistently (new PNG, its SHA in the manifest) is reused from
    # the cache, but its check fails: that is an error, not a success.
    import hashlib
    import json

    from pipeline.render import decode_png, encode_png

    folder = tmp_path / "store" / "images" / a
    labels = decode_png((folder / "label_map.png").read_bytes())
    labels[:] = 0
    forged = encode_png(labels)
    (folder / "label_map.png").write_bytes(forged)
    manifest = json.loads((folder / "label_map.manifest.json").read_text())
    manifest["files"]["label_map.png"] = {
        "sha256": hashlib.sha256(forged).hexdigest(),
        "bytes": len(forged),
    }
    (folder / "label_map.manifest.json").write_text(json.dumps(manifest))
    code, out, err = _run(incoming, tmp_path, instance, all_=True, environ={"KSEG_K": "3"})
    assert code == 1
    assert f"kseg run: check failed: {a}: check labels_match_image of label_map failed" in err
    assert "1 failed check(s)" in out


def test_the_project_instance_is_created_with_telemetry_off(tmp_path: Path) -> None:
    home = tmp_path / "home"
    instance = open_instance(home)
    try:
        assert "enabled: false" in (home / "dagster.yaml").read_text()
        assert instance.root_directory == str(home)
        assert not instance.telemetry_enabled
    finally:
        instance.dispose()


def test_the_instance_has_a_memory_budget_for_image_runs(tmp_path: Path) -> None:
    """A new instance queues runs of per-image steps beyond what 3/4 of the memory holds
    (each run budgeted for a 100-megapixel image); the limit Dagster reads is that one."""
    from assets.instance import RUN_BASE_BYTES, image_run_limit, machine_memory
    from assets.names import IMAGE_POOL

    per_run = 100_000_000 * 40 + RUN_BASE_BYTES  # 4.4 GB
    assert image_run_limit(24 * 2**30) == 4  # this kind of machine: 19.3 GB budget
    assert image_run_limit(64 * 2**30) == 11
    assert image_run_limit(2 * 2**30) == 1  # never zero: one run always goes
    assert image_run_limit(4 * per_run, max_pixels=100_000_000) == 3
    home = tmp_path / "home"
    instance = open_instance(home)
    try:
        pools = instance.get_concurrency_config().pool_config
        assert pools.pool_granularity.value == "run"
        assert pools.default_pool_limit == image_run_limit(machine_memory())
        assert "kseg_images N`" in (home / "dagster.yaml").read_text()
        assert IMAGE_POOL == "kseg_images"
        # The pool has its limit before any run is queued (assets.dagster_gaps, gap 3) ...
        limits = {limit.name: limit for limit in instance.event_log_storage.get_pool_limits()}
        assert limits[IMAGE_POOL].limit == pools.default_pool_limit
        assert limits[IMAGE_POOL].from_default
        # ... and a limit the user set (UI, `dagster instance concurrency set`) is kept.
        instance.event_log_storage.set_concurrency_slots(IMAGE_POOL, 7)
    finally:
        instance.dispose()
    instance = open_instance(home)
    try:
        limits = {limit.name: limit for limit in instance.event_log_storage.get_pool_limits()}
        assert limits[IMAGE_POOL].limit == 7 and not limits[IMAGE_POOL].from_default
    finally:
        instance.dispose()


def test_an_unedited_instance_file_of_the_previous_kseg_gets_the_budget(tmp_path: Path) -> None:
    from assets.instance import _BODY

    home = tmp_path / "home"
    home.mkdir()
    previous = (
        "# Dagster instance of the kseg project, created by `kseg run`.\n"
        "# Open the UI on it with `kseg ui` (DAGSTER_HOME=<this folder> dagster dev -w "
        "workspace.yaml).\n" + _BODY
    )
    (home / "dagster.yaml").write_text(previous)
    open_instance(home).dispose()
    assert "granularity: run" in (home / "dagster.yaml").read_text()
    edited = previous + "# mine\n"
    (home / "dagster.yaml").write_text(edited)
    open_instance(home).dispose()
    assert (home / "dagster.yaml").read_text() == edited  # a user's file is left alone


@pytest.mark.parametrize(
    ("wanted", "size", "expected"),
    [
        ({"a", "b", "c"}, 10, [("a", "c")]),
        ({"a", "c"}, 10, [("a", "a"), ("c", "c")]),
        ({"a", "b", "c", "d"}, 3, [("a", "c"), ("d", "d")]),
        (set(), 3, []),
    ],
)
def test_batches_are_contiguous_ranges(wanted: set, size: int, expected: list) -> None:
    assert batches(["a", "b", "c", "d"], wanted, size) == expected


def test_the_instance_defaults_to_dagster_home_or_the_project_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from assets.storage import PROJECT_ROOT

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert project_home() == PROJECT_ROOT / ".dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "elsewhere"))
    assert project_home() == tmp_path / "elsewhere"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_submit_registers_the_images_and_names_a_webserver_that_does_not_answer(
    incoming: Path, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    key = write_image(incoming, "a.png")
    url = f"http://127.0.0.1:{_free_port()}"
    out, err = io.StringIO(), io.StringIO()
    code = run_command(
        str(incoming),
        store_root=str(tmp_path / "store"),
        instance=instance,
        submit=True,
        webserver=url,
        environ={},
        out=out,
        err=err,
    )
    assert code == 2
    (line,) = err.getvalue().splitlines()
    assert line.startswith(f"kseg run: error: no Dagster webserver answers at {url}")
    assert instance.get_dynamic_partitions("images") == [key]  # registered before submitting
    assert instance.get_runs() == []  # nothing ran here
    assert not (tmp_path / "store" / "images").exists()


def test_submit_refuses_a_webserver_that_is_not_a_url(
    incoming: Path, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    write_image(incoming, "a.png")
    err = io.StringIO()
    code = run_command(
        str(incoming), store_root=str(tmp_path / "store"), instance=instance, submit=True,
        webserver="127.0.0.1:3000", environ={}, out=io.StringIO(), err=err,
    )  # fmt: skip
    assert code == 2
    assert "KSEG_WEBSERVER_URL: '127.0.0.1:3000' is not an http(s) URL" in err.getvalue()


@pytest.mark.parametrize(("value", "expected"), [(None, 50), ("1", None), ("7", 7)])
def test_the_batch_size_of_backfills_follows_kseg_batch_size(
    monkeypatch: pytest.MonkeyPatch, value: str | None, expected: int | None
) -> None:
    from assets.definitions import build_defs

    if value is None:
        monkeypatch.delenv("KSEG_BATCH_SIZE", raising=False)
    else:
        monkeypatch.setenv("KSEG_BATCH_SIZE", value)
    defs = build_defs()
    for asset in IMAGE_ASSETS:
        policy = defs.resolve_assets_def(asset).backfill_policy
        if expected is None:  # one run per image, tagged dagster/partition
            assert policy is None, asset
        else:
            assert policy.max_partitions_per_run == expected, asset


def test_an_invalid_batch_size_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from assets.definitions import build_defs

    monkeypatch.setenv("KSEG_BATCH_SIZE", "0")
    with pytest.raises(ValueError, match="KSEG_BATCH_SIZE must be a positive integer, got '0'"):
        build_defs()
