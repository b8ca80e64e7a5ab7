"""Helpers of the Dagster robustness tests: run the project's jobs, tick its sensors and
automation like the daemon, read what a run logged."""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from daemon_driver import DaemonDriver

import assets.steps.raw_image as raw_image_step
from assets.definitions import build_defs
from assets.names import (
    IMAGE_ASSETS,
    PARTITION_TAG,
    PARTITIONS_NAME,
    RANGE_END_TAG,
    RANGE_START_TAG,
    REPORT,
)
from assets.partitions import run_tags_for
from assets.run import run_command
from assets.sensors import SensorSettings
from assets.settings import ProjectSettings
from assets.storage import KsegStorage, Store
from pipeline.settings import SegmentSettings

QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def project(config: dict | None = None) -> ProjectSettings:
    """The project settings ``config`` (kseg's defaults for the fields it does not set)."""
    return ProjectSettings(SegmentSettings(**(config or {})).validate(), "definitions")


@contextmanager
def pixel_limit(limit: int) -> Iterator[None]:
    """Lower ``raw_image``'s pixel limit, a constant of the code location that is part of
    its cache key: the limit it decodes with and the one its key hashes."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(raw_image_step, "DEFAULT_MAX_PIXELS", limit)
        patch.setitem(raw_image_step.STEP.constants, "max_pixels", limit)
        yield


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
    """One ``segment_images`` run of one partition, as the UI launches it; ``config``: the
    project settings of the code location (settings are no run config any more)."""
    register(instance, [key])
    kwargs: dict[str, Any] = {"tags": run_tags_for(key, key)}
    if selection is not None:
        kwargs["asset_selection"] = [dg.AssetKey(a) for a in selection]
    job = build_defs(storage, project(config)).resolve_job_def("segment_images")
    return job.execute_in_process(
        run_config=QUIET, instance=instance, raise_on_error=False, **kwargs
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
        project=project(config),
        batch_size=batch_size,
        environ={},
        out=out,
        err=err,
    )
    return KsegRun(code, out.getvalue(), err.getvalue())


@dataclass
class Failure:
    """A step failure: its step, description, metadata and the failed partitions it lists."""

    run_id: str
    step: str
    description: str
    metadata: dict[str, Any]
    partitions: dict[str, str] = field(default_factory=dict)  # partition -> error message


def failures(instance: dg.DagsterInstance, run_id: str) -> list[Failure]:
    """Every step failure of a run; each must be a ``dagster.Failure`` naming its images."""
    found = []
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        data = entry.dagster_event.step_failure_data.user_failure_data
        assert data is not None, "the step failed with an error, not a dagster.Failure"
        metadata = {k: v.value for k, v in data.metadata.items()}
        listed = {item["partition"]: item["error"] for item in metadata["failed_partitions"]}
        step = entry.dagster_event.step_key
        found.append(Failure(run_id, step, data.description, metadata, listed))
    return found


def started_steps(instance: dg.DagsterInstance, run_id: str) -> set[str]:
    """The steps a run started (a step whose upstream step failed is never started)."""
    return {
        entry.dagster_event.step_key
        for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
    }


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
    """The partitions a run covered (one, or a range), in partition order."""
    order = list(instance.get_dynamic_partitions(PARTITIONS_NAME))
    if PARTITION_TAG in run.tags:
        return [run.tags[PARTITION_TAG]]
    start = order.index(run.tags[RANGE_START_TAG])
    end = order.index(run.tags[RANGE_END_TAG])
    return order[start : end + 1]


def is_batch(run: dg.DagsterRun) -> bool:
    """True for a run over a range of partitions (a batch), False for one image."""
    return RANGE_START_TAG in run.tags


def all_intact(store: Store, key: str) -> bool:
    """Every per-image asset of ``key`` has a manifest whose files verify."""
    for asset in IMAGE_ASSETS:
        manifest = store.manifest(key, asset)
        if manifest is None or not store.verify(manifest):
            return False
    return True


# -- the daemon, in process ----------------------------------------------------------------
class Daemon(DaemonDriver):
    """What the Dagster daemon does for kseg, one step at a time, in process.

    * :meth:`tick` and :meth:`evaluate`: the sensor and automation (``DaemonDriver``);
    * :meth:`run_batch` / :meth:`run_split`: what a backfill run worker executes for
      the requested partitions, and the runs ``failed_batch_sensor`` requests when a
      batch failed.
    """

    def __init__(
        self,
        instance: dg.DagsterInstance,
        storage: KsegStorage,
        settings: SensorSettings | None = None,
        config: dict | None = None,
    ) -> None:
        super().__init__(instance, storage, settings, project(config))

    def run_batch(
        self, assets: Sequence[str], partitions: Sequence[str]
    ) -> dg.ExecuteInProcessResult:
        """One run of ``assets`` over a contiguous range of partitions (a backfill batch)."""
        order = self.partitions()
        covered = sorted(partitions, key=order.index)
        first, last = covered[0], covered[-1]
        assert order[order.index(first) : order.index(last) + 1] == covered, "not contiguous"
        return self._execute(assets, run_tags_for(first, last))

    def run_report(self) -> dg.ExecuteInProcessResult:
        return self._execute([REPORT], {})

    def run_split(self, failed: dg.DagsterRun) -> list[dg.ExecuteInProcessResult]:
        """Evaluate ``failed_batch_sensor`` on a failed run and execute what it requests."""
        sensor = self.defs.resolve_sensor_def("failed_batch_sensor")
        (failure,) = self.instance.all_logs(failed.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        context = dg.build_run_status_sensor_context(
            sensor_name=sensor.name,
            dagster_event=failure.dagster_event,
            dagster_instance=self.instance,
            dagster_run=failed,
        ).for_run_failure()
        requests = list(sensor(context) or [])
        results = []
        for request in requests:
            assert isinstance(request, dg.RunRequest)
            names = [key.to_user_string() for key in request.asset_selection]
            tags = {**request.tags, PARTITION_TAG: request.partition_key}
            results.append(self._execute(names, tags))
        return results

    def _execute(self, assets: Sequence[str], tags: dict[str, str]) -> dg.ExecuteInProcessResult:
        job = self.defs.resolve_implicit_global_asset_job_def()
        return job.execute_in_process(
            run_config=QUIET,
            instance=self.instance,
            asset_selection=[dg.AssetKey(name) for name in assets],
            tags=tags,
            raise_on_error=False,
        )


# -- pickles -------------------------------------------------------------------------------
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
