"""``kseg run``: register the incoming folder's images and materialise the new and stale ones.

1. Scan the incoming folder (:func:`assets.incoming.scan_incoming`) and register every
   image as a partition of ``images`` in the project's Dagster instance.
2. Plan: an image needs work when any per-image asset lacks a recorded
   materialisation whose data version equals the cache key derived from the file's
   current bytes and the settings, or its stored output is missing or damaged.
   ``--all`` takes every image (whose steps are then cache hits).
3. Materialise the planned images with the ``segment_images`` job, in process, up to
   :data:`~assets.keys.BATCH_SIZE` partitions per run (contiguous ranges of the
   partition order), then rebuild the report.

The instance is the project-local ``DAGSTER_HOME`` (``.dagster_home/`` in the
repository, created with a ``dagster.yaml`` that turns telemetry off) unless
``DAGSTER_HOME`` is set, so ``dagster dev`` started with the same ``DAGSTER_HOME``
shows these runs. A bad file prints one line on stderr and makes the exit status 1;
the other images are still processed.
"""

import contextlib
import gc
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import dagster as dg

from pipeline.io import atomic_write_bytes

from .config import SegmentationConfig
from .incoming import scan_incoming
from .keys import BATCH_SIZE, PARTITIONS_NAME
from .planning import batches, plan
from .storage import (
    DEFAULT_INCOMING,
    DEFAULT_STORE,
    INCOMING_ENV,
    PROJECT_ROOT,
    STORE_ENV,
    KsegStorage,
)

__all__ = [
    "DAGSTER_YAML",
    "RunSummary",
    "build_report",
    "instance_yaml",
    "materialise",
    "open_instance",
    "project_home",
    "run_command",
]

#: The ``dagster.yaml`` written into a new project-local DAGSTER_HOME (``{runs_dir}``: where
#: the event log databases go, as Dagster's default SQLite storage puts them).
DAGSTER_YAML = """\
# Dagster instance of the kseg project, created by `kseg run`.
# Open the UI on it with:  DAGSTER_HOME=<this folder> dagster dev -w workspace.yaml
telemetry:
  enabled: false
nux:
  enabled: false
# Dagster's SQLite event log with pooled connections (see assets/event_storage.py).
event_log_storage:
  module: assets.event_storage
  class: PooledSqliteEventLogStorage
  config:
    base_dir: {runs_dir}
"""

_QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def project_home() -> Path:
    """``$DAGSTER_HOME`` if set, else ``.dagster_home`` in the project root."""
    env = os.environ.get("DAGSTER_HOME")
    return Path(env).expanduser().absolute() if env else PROJECT_ROOT / ".dagster_home"


def instance_yaml(home: Path) -> str:
    """The ``dagster.yaml`` of a kseg instance whose DAGSTER_HOME is ``home``."""
    # A JSON string is a valid YAML scalar whatever characters the path has.
    runs_dir = json.dumps((Path(home).absolute() / "history" / "runs").as_posix())
    return DAGSTER_YAML.format(runs_dir=runs_dir)


#: ``dagster.yaml`` texts earlier kseg versions wrote; found unedited, they are upgraded.
_EARLIER_YAML = (
    "# Dagster instance of the kseg project, created by `kseg run`.\n"
    "# Open the UI on it with:  DAGSTER_HOME=<this folder> dagster dev -w workspace.yaml\n"
    "telemetry:\n  enabled: false\nnux:\n  enabled: false\n",
)


def open_instance(home: str | os.PathLike[str] | None = None) -> dg.DagsterInstance:
    """The persistent instance in ``home`` (default :func:`project_home`), created if new.

    A ``dagster.yaml`` kseg wrote in an earlier version, and nobody edited since, is
    replaced by the current one (same databases; the event log gains pooled
    connections). Any other existing file is left as it is.
    """
    path = Path(home).expanduser().absolute() if home else project_home()
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    if not config.exists() or config.read_text(encoding="utf-8") in _EARLIER_YAML:
        atomic_write_bytes(config, instance_yaml(path).encode("utf-8"))
    return dg.DagsterInstance.from_config(str(path))


@dataclass
class RunSummary:
    """What ``kseg run`` did (also returned for tests and the benchmark)."""

    images: int = 0
    new: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    planned: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    report_path: str | None = None
    seconds: float = 0.0


def _failure_messages(result: dg.ExecuteInProcessResult) -> list[str]:
    messages = []
    for event in result.all_events:
        if event.event_type_value != "STEP_FAILURE":
            continue
        data = event.step_failure_data
        user = data.user_failure_data if data else None
        failed = user.metadata.get("failed_partitions") if user else None
        if failed is not None:
            messages += [item["error"] for item in failed.value]
        elif user is not None and user.description:
            messages.append(user.description)
        elif data is not None and data.error is not None:
            messages.append(data.error.message.strip().splitlines()[-1])
    if not result.success and not messages:
        messages.append(f"run {result.run_id} failed")
    return messages


#: Dagster switch (read when a run is created) for one "materialisation planned" event per
#: asset and run instead of one per asset *and partition*: with SQLite storage every event
#: costs several ms, and a batch of 50 images would log 350 planned events. Its cost: a
#: failed run does not mark its partitions as failed (they show as missing); kseg run
#: reports failures itself. Set only around kseg run's own runs.
_SUBSET_PLANNED_EVENTS = "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"


@contextlib.contextmanager
def _batched_planned_events() -> Iterator[None]:
    before = os.environ.get(_SUBSET_PLANNED_EVENTS)
    os.environ[_SUBSET_PLANNED_EVENTS] = "true"
    try:
        yield
    finally:
        if before is None:
            del os.environ[_SUBSET_PLANNED_EVENTS]
        else:
            os.environ[_SUBSET_PLANNED_EVENTS] = before


@contextlib.contextmanager
def _long_lived_objects_frozen() -> Iterator[None]:
    """Keep Python's cyclic collector off the objects that exist before a run.

    A run allocates enough to trigger full collections, and each one traversed
    every object alive: the definitions, the instance and everything earlier runs
    of this process left. After one backfill of 50 images that was 0.21 s per full
    pass, a tenth of re-materialising them all from the cache. The objects are only
    frozen for the run (``gc.freeze``) and then handed back to the collector.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def materialise(
    instance: dg.DagsterInstance,
    storage: KsegStorage,
    keys: list[str],
    *,
    run_config: Mapping[str, Any] | None = None,
    batch_size: int = BATCH_SIZE,
    quiet: bool = True,
) -> tuple[list[str], list[str]]:
    """Run ``segment_images`` over ``keys`` in batches; returns (run ids, error messages)."""
    from .definitions import build_defs

    job = build_defs(storage).resolve_job_def("segment_images")
    config = {**(_QUIET if quiet else {}), **(run_config or {})}
    order = list(instance.get_dynamic_partitions(PARTITIONS_NAME))
    runs, errors = [], []
    for start, end in batches(order, set(keys), batch_size):
        tags = {
            "dagster/asset_partition_range_start": start,
            "dagster/asset_partition_range_end": end,
            "kseg/launched_by": "kseg-run",
        }
        with _batched_planned_events(), _long_lived_objects_frozen():
            result = job.execute_in_process(
                run_config=config, instance=instance, tags=tags, raise_on_error=False
            )
        runs.append(result.run_id)
        errors += _failure_messages(result)
    return runs, errors


def build_report(
    instance: dg.DagsterInstance, storage: KsegStorage, *, quiet: bool = True
) -> tuple[str | None, list[str]]:
    """Materialise ``segmentation_report``; returns (its path, error messages)."""
    from .definitions import build_defs

    job = build_defs(storage).resolve_job_def("segmentation_report_job")
    result = job.execute_in_process(
        run_config=_QUIET if quiet else None,
        instance=instance,
        tags={"kseg/launched_by": "kseg-run"},
        raise_on_error=False,
    )
    if not result.success:
        return None, _failure_messages(result)
    path = result.asset_materializations_for_node("segmentation_report")[0].metadata["path"]
    return str(path.value), []


def run_command(
    incoming: str | None = None,
    all_: bool = False,
    *,
    store_root: str | None = None,
    dagster_home: str | os.PathLike[str] | None = None,
    instance: dg.DagsterInstance | None = None,
    run_config: Mapping[str, Any] | None = None,
    batch_size: int = BATCH_SIZE,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Implement ``kseg run [--incoming DIR] [--all]``; returns the exit status.

    Parameters
    ----------
    incoming : str, optional
        The incoming folder (default ``$KSEG_INCOMING_DIR``, else ``data/incoming``).
    all_ : bool
        Materialise every image, not only the new and stale ones.
    store_root : str, optional
        Storage root (default ``$KSEG_STORE_ROOT``, else ``data/store``).
    dagster_home : path, optional
        Instance folder (default ``$DAGSTER_HOME``, else ``.dagster_home``).
    instance : DagsterInstance, optional
        Use this instance instead (tests); ``dagster_home`` is then ignored.
    run_config : mapping, optional
        Run config of the ``segment_images`` job (e.g. segmentation settings).
    batch_size : int
        Partitions per run.
    out, err : text streams
        Default ``sys.stdout`` / ``sys.stderr``.

    Returns
    -------
    int
        0 when every image was materialised, 1 if any file failed or was refused,
        2 if the incoming folder or the settings are unusable.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    started = time.perf_counter()
    storage = KsegStorage(
        incoming_dir=incoming or os.environ.get(INCOMING_ENV) or DEFAULT_INCOMING,
        store_root=store_root or os.environ.get(STORE_ENV) or DEFAULT_STORE,
    )
    try:
        scan = scan_incoming(storage.incoming())
        op_config = (run_config or {}).get("ops", {}).get("image_steps", {})
        config = SegmentationConfig(**op_config.get("config", {}))
        config.to_settings()
    except (FileNotFoundError, ValueError) as exc:
        print(f"kseg run: error: {exc}", file=err)
        return 2
    summary = RunSummary(images=len(scan.images))
    summary.errors += [f"{scan.root / r.relpath}: {r.reason}" for r in scan.refused]
    owned = instance is None
    instance = instance or open_instance(dagster_home)
    try:
        keys = [image.key for image in scan.images]
        registered = set(instance.get_dynamic_partitions(PARTITIONS_NAME))
        instance.add_dynamic_partitions(PARTITIONS_NAME, [k for k in keys if k not in registered])
        summary.new, summary.stale = plan(list(scan.images), instance, storage, config)
        summary.planned = keys if all_ else summary.new + summary.stale
        if summary.planned:
            runs, errors = materialise(
                instance, storage, summary.planned, run_config=run_config, batch_size=batch_size
            )
            summary.runs += runs
            summary.errors += errors
        summary.report_path, errors = build_report(instance, storage)
        summary.errors += errors
        home = Path(instance.root_directory)
    finally:
        if owned:
            instance.dispose()
    summary.seconds = time.perf_counter() - started
    _print_summary(summary, scan.root, home, out, err)
    return 1 if summary.errors else 0


def _print_summary(summary: RunSummary, root: Path, home: Path, out: TextIO, err: TextIO) -> None:
    for message in summary.errors:
        print(f"kseg run: error: {message}", file=err)
    up_to_date = summary.images - len(summary.new) - len(summary.stale)
    print(
        f"kseg run: {summary.images} image(s) in {root}: {len(summary.new)} new, "
        f"{len(summary.stale)} stale, {up_to_date} up to date",
        file=out,
    )
    failed = len(summary.errors)
    print(
        f"kseg run: processed {len(summary.planned)} image(s) in {len(summary.runs)} run(s), "
        f"{failed} error(s), {summary.seconds:.1f} s",
        file=out,
    )
    if summary.report_path:
        print(f"kseg run: report {summary.report_path}", file=out)
    print(
        f"kseg run: runs recorded in {home}; browse them with "
        f"DAGSTER_HOME={home} dagster dev -w workspace.yaml",
        file=out,
    )
