"""The project instance's event log: Dagster's SQLite layout, pooled connections."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import dagster as dg
import yaml
from dagster_helpers import write_image

from assets import event_storage
from assets.event_storage import PooledSqliteEventLogStorage
from assets.keys import CODE_VERSIONS, IMAGE_ASSETS
from assets.run import materialise, open_instance
from assets.storage import KsegStorage


def _materialisations(instance: dg.DagsterInstance, asset: str) -> list[dg.EventLogRecord]:
    return list(instance.fetch_materializations(dg.AssetKey(asset), limit=1000).records)


def test_the_project_instance_uses_the_pooled_storage_in_dagsters_layout(tmp_path: Path) -> None:
    home = tmp_path / "home with: odd # chars"
    instance = open_instance(home)
    try:
        assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)
        config = yaml.safe_load((home / "dagster.yaml").read_text())
        assert config["event_log_storage"]["config"]["base_dir"] == f"{home}/history/runs"
        assert (home / "history" / "runs" / "index.db").is_file()
    finally:
        instance.dispose()


def test_an_unedited_earlier_config_is_upgraded_an_edited_one_kept(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    (old / "dagster.yaml").write_text(
        "# Dagster instance of the kseg project, created by `kseg run`.\n"
        "# Open the UI on it with:  DAGSTER_HOME=<this folder> dagster dev -w workspace.yaml\n"
        "telemetry:\n  enabled: false\nnux:\n  enabled: false\n"
    )
    edited = tmp_path / "edited"
    edited.mkdir()
    (edited / "dagster.yaml").write_text("telemetry:\n  enabled: false\n# mine\n")
    for home, pooled in ((old, True), (edited, False)):
        instance = open_instance(home)
        try:
            assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage) is pooled
        finally:
            instance.dispose()
    assert (edited / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n# mine\n"


def test_events_written_through_the_pool_are_read_by_a_fresh_instance(
    tmp_path: Path, incoming: Path, storage: KsegStorage
) -> None:
    keys = [write_image(incoming, f"p{i}.png", name) for i, name in enumerate(["coffee", "rocket"])]
    home = tmp_path / "home"
    instance = open_instance(home)
    try:
        instance.add_dynamic_partitions("images", keys)
        runs, errors = materialise(instance, storage, keys, batch_size=1)
        assert not errors and len(runs) == 2
    finally:
        instance.dispose()
    # Another process (the UI, the daemon) opens the same files from scratch.
    reader = dg.DagsterInstance.from_config(str(home))
    try:
        for asset in IMAGE_ASSETS:
            records = _materialisations(reader, asset)
            assert sorted(r.partition_key for r in records) == sorted(keys)
            for record in records:
                tags = record.event_log_entry.dagster_event.event_specific_data.materialization.tags
                assert tags["dagster/code_version"] == CODE_VERSIONS[asset]
        assert {reader.get_run_by_id(r).status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
        assert all(reader.all_logs(r) for r in runs)
    finally:
        reader.dispose()


def test_last_materialisation_in_the_asset_index_is_dagsters_own_serialisation(
    tmp_path: Path, incoming: Path, storage: KsegStorage
) -> None:
    """The index row written around the event's JSON equals serialize_value of the record."""
    from dagster._core.event_api import EventLogRecord
    from dagster_shared.serdes import serialize_value

    keys = [write_image(incoming, "p0.png", "coffee")]
    home = tmp_path / "home"
    instance = open_instance(home)
    try:
        instance.add_dynamic_partitions("images", keys)
        _, errors = materialise(instance, storage, keys)
        assert not errors
    finally:
        instance.dispose()
    index = home / "history" / "runs" / "index.db"
    with sqlite3.connect(index) as conn:
        rows = conn.execute("SELECT asset_key, last_materialization FROM asset_keys").fetchall()
    stored = {key: value for key, value in rows if value is not None}
    assert len(stored) == len(IMAGE_ASSETS)
    reader = dg.DagsterInstance.from_config(str(home))
    try:
        for asset in IMAGE_ASSETS:
            (latest,) = _materialisations(reader, asset)
            expected = serialize_value(
                EventLogRecord(storage_id=latest.storage_id, event_log_entry=latest.event_log_entry)
            )
            assert stored[dg.AssetKey(asset).to_string()] == expected
            # ... and Dagster's own reader of the index finds it.
            event = reader.get_latest_materialization_event(dg.AssetKey(asset))
            assert event is not None and event.dagster_event.partition == keys[0]
    finally:
        reader.dispose()


def test_check_results_land_in_the_check_executions_table(
    tmp_path: Path, incoming: Path, storage: KsegStorage
) -> None:
    """Each check result (event and execution row, one transaction) is read back as Dagster's."""
    from dagster._core.storage.asset_check_execution_record import (
        AssetCheckExecutionRecordStatus,
    )

    from assets.checks import image_check_specs

    keys = [write_image(incoming, f"c{i}.png", name) for i, name in enumerate(["coffee", "rocket"])]
    home = tmp_path / "home"
    instance = open_instance(home)
    try:
        instance.add_dynamic_partitions("images", keys)
        runs, errors = materialise(instance, storage, keys)
        assert not errors and len(runs) == 1
    finally:
        instance.dispose()
    reader = dg.DagsterInstance.from_config(str(home))
    try:
        for spec in image_check_specs():
            history = reader.event_log_storage.get_asset_check_execution_history(spec.key, limit=10)
            assert sorted(r.partition for r in history) == sorted(keys), spec.key
            for record in history:
                assert record.status == AssetCheckExecutionRecordStatus.SUCCEEDED
                assert record.run_id == runs[0]
                assert record.event is not None and record.event.dagster_event is not None
    finally:
        reader.dispose()


def test_databases_are_in_wal_mode_and_pooled_connections_do_not_fsync(tmp_path: Path) -> None:
    instance = open_instance(tmp_path / "home")
    try:
        storage = instance.event_log_storage
        assert isinstance(storage, PooledSqliteEventLogStorage)
        with storage.index_connection() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    finally:
        instance.dispose()
    # The setting is per connection: the file itself is untouched for other readers.
    with sqlite3.connect(tmp_path / "home" / "history" / "runs" / "index.db") as plain:
        assert plain.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL, the default


def test_open_engines_are_bounded_and_evicted_runs_stay_readable(
    tmp_path: Path, incoming: Path, storage: KsegStorage, monkeypatch
) -> None:
    monkeypatch.setattr(event_storage, "MAX_ENGINES", 2)
    keys = [write_image(incoming, f"q{i}.png", "coffee") for i in range(3)]
    instance = open_instance(tmp_path / "home")
    try:
        instance.add_dynamic_partitions("images", keys)
        runs, errors = materialise(instance, storage, keys, batch_size=1)
        assert not errors and len(runs) == 3
        pooled = instance.event_log_storage
        assert isinstance(pooled, PooledSqliteEventLogStorage)
        assert len(pooled._engines) <= 2
        for run_id in runs:  # reopens the evicted run databases
            logs = instance.all_logs(run_id)
            kinds = {e.dagster_event.event_type for e in logs if e.dagster_event}
            assert {
                dg.DagsterEventType.ASSET_MATERIALIZATION,
                dg.DagsterEventType.RUN_SUCCESS,
            } <= kinds
    finally:
        instance.dispose()


def test_wipe_then_write_again(tmp_path: Path, incoming: Path, storage: KsegStorage) -> None:
    key = write_image(incoming, "w.png", "chelsea")
    instance = open_instance(tmp_path / "home")
    try:
        instance.add_dynamic_partitions("images", [key])
        assert not materialise(instance, storage, [key])[1]
        instance.event_log_storage.wipe()  # also forgets the dynamic partitions
        assert _materialisations(instance, "raw_image") == []
        assert instance.get_dynamic_partitions("images") == []
        instance.add_dynamic_partitions("images", [key])
        assert not materialise(instance, storage, [key])[1]
        assert [r.partition_key for r in _materialisations(instance, "raw_image")] == [key]
    finally:
        instance.dispose()
