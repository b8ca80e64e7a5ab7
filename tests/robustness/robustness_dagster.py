"""Helpers of the Dagster robustness tests: run the project's job, read what a run logged."""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from assets.definitions import build_defs
from assets.keys import IMAGE_ASSETS, PARTITIONS_NAME
from assets.run import run_command
from assets.storage import KsegStorage
from assets.store import Store

QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def register(instance: dg.DagsterInstance, keys: Sequence[str]) -> None:
    known = set(instance.get_dynamic_partitions(PARTITIONS_NAME))
    instance.add_dynamic_partitions(PARTITIONS_NAME, [k for k in keys if k not in known])


def run_partition(
    instance: dg.DagsterInstance,
    storage: KsegStorage,
    key: str,
    *,
    config: dict | None = None,
    selection: Sequence[str] | None = None,
) -> dg.ExecuteInProcessResult:
    """One ``segment_images`` run of one partition, as the UI or a sensor launches it."""
    register(instance, [key])
    run_config: dict[str, Any] = dict(QUIET)
    if config:
        run_config["ops"] = {"image_steps": {"config": config}}
    kwargs: dict[str, Any] = {"partition_key": key}
    if selection is not None:
        kwargs["asset_selection"] = [dg.AssetKey(a) for a in selection]
    job = build_defs(storage).resolve_job_def("segment_images")
    return job.execute_in_process(
        run_config=run_config, instance=instance, raise_on_error=False, **kwargs
    )


@dataclass
class KsegRun:
    """``kseg run`` (assets.run.run_command) in process, with what it printed."""

    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def kseg_run(
    instance: dg.DagsterInstance,
    incoming: Path,
    store_root: Path,
    *,
    config: dict | None = None,
    batch_size: int = 50,
) -> KsegRun:
    out, err = io.StringIO(), io.StringIO()
    code = run_command(
        str(incoming),
        store_root=str(store_root),
        instance=instance,
        run_config={"ops": {"image_steps": {"config": config}}} if config else None,
        batch_size=batch_size,
        out=out,
        err=err,
    )
    return KsegRun(code, out.getvalue(), err.getvalue())


@dataclass
class Failure:
    """A step failure: its description, metadata and the failed partitions it lists."""

    run_id: str
    description: str
    metadata: dict[str, Any]
    partitions: dict[str, str] = field(default_factory=dict)  # partition -> error message


def failures(instance: dg.DagsterInstance, run_id: str) -> list[Failure]:
    found = []
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        data = entry.dagster_event.step_failure_data.user_failure_data
        assert data is not None, "the step failed with an error, not a dagster.Failure"
        metadata = {k: v.value for k, v in data.metadata.items()}
        listed = {item["partition"]: item["error"] for item in metadata["failed_partitions"]}
        found.append(Failure(run_id, data.description, metadata, listed))
    return found


def materialised(instance: dg.DagsterInstance, run_id: str) -> dict[tuple[str, str], dict]:
    """(asset, partition) -> metadata values of every materialisation a run logged."""
    found = {}
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        m = entry.dagster_event.event_specific_data.materialization
        found[m.asset_key.to_user_string(), m.partition] = {
            k: v.value for k, v in m.metadata.items()
        }
    return found


def run_partitions(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[str]:
    """The partitions a range run covered, in partition order."""
    order = list(instance.get_dynamic_partitions(PARTITIONS_NAME))
    if "dagster/partition" in run.tags:
        return [run.tags["dagster/partition"]]
    start = order.index(run.tags["dagster/asset_partition_range_start"])
    end = order.index(run.tags["dagster/asset_partition_range_end"])
    return order[start : end + 1]


def all_intact(store: Store, key: str) -> bool:
    """Every per-image asset of ``key`` has a manifest whose files verify."""
    for asset in IMAGE_ASSETS:
        manifest = store.manifest(key, asset)
        if manifest is None or not store.verify(manifest):
            return False
    return True


PICKLE_HEADERS = tuple(bytes([0x80, protocol]) for protocol in range(2, 6))


def pickled_files(*roots: Path) -> list[str]:
    """Files under ``roots`` that start like a pickle (protocol 2-5) or are named like one."""
    found = []
    for root in roots:
        for dirpath, _, filenames in os.walk(root):
            for name in filenames:
                path = Path(dirpath) / name
                with open(path, "rb") as fh:
                    head = fh.read(2)
                if head in PICKLE_HEADERS or name.endswith((".pkl", ".pickle")):
                    found.append(str(path))
    return found


class Unpickling(AssertionError):
    """Raised when anything is unpickled while :func:`forbid_unpickling` is active."""


def forbid_unpickling(monkeypatch) -> list[str]:
    """Make every unpickling entry point raise; returns the list of attempts (for messages)."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args)[:80])
        raise Unpickling("something was unpickled")

    class Refusing(pickle.Unpickler):
        def load(self):
            return refuse()

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", Refusing)
    return attempts
