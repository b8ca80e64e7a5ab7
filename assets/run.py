"""``kseg run``: register the incoming folder's images and materialise the new and stale ones.

1. **Survey** the incoming folder (:func:`assets.changes.survey`, the sensor's own
   change detection) and register every image as a partition of ``images``.
2. **Plan** (:func:`assets.changes.plan`): an image needs work when any of its steps'
   stored outputs is missing, damaged, or has another cache key than the file's bytes,
   the image's settings and the code give. ``--all`` takes every image (whose steps are
   then cache hits).
3. **Materialise** the planned images with ``segment_images``, in process, up to
   :data:`~assets.names.BATCH_SIZE` partitions per run. A batch that fails is run
   again image by image (as the ``failed_batch_sensor`` does for the daemon's runs), so
   one bad file costs only its own image. Then rebuild the report.

With ``--submit`` (:mod:`assets.submit`), step 3 enqueues the runs in the run queue of
a Dagster deployment (the webserver of ``$KSEG_WEBSERVER_URL``) instead, and the
command returns once they are queued; the deployment's automation rebuilds the report.

Runs are recorded in the project's instance (:mod:`assets.instance`), so ``kseg ui``
shows them. A bad file, or a failed check, prints one line on stderr and makes the exit
status 1; the other images are still processed.
"""

import os
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import dagster as dg

from pipeline.errors import KsegError

from .changes import plan, survey
from .incoming import DEFAULT_MAX_FILE_BYTES
from .instance import open_instance
from .names import BATCH_SIZE, LAUNCHED_BY_TAG, PARTITIONS_NAME, REPORT
from .partitions import batches, run_tags_for
from .settings import ProjectSettings
from .storage import (
    DEFAULT_INCOMING,
    DEFAULT_STORE,
    INCOMING_ENV,
    MAX_FILE_ENV,
    STORE_ENV,
    KsegStorage,
)
from .submit import submit_runs, webserver_url

__all__ = ["RunSummary", "build_report", "fail_abandoned_runs", "materialise", "run_command"]

_QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
_HOST = socket.gethostname()
_TAG = {LAUNCHED_BY_TAG: "kseg-run", "kseg/host": _HOST, "kseg/pid": str(os.getpid())}
# A kseg run starts each run it creates at once: one NOT_STARTED is abandoned too.
_UNFINISHED = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_abandoned_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed the runs an earlier ``kseg run`` on this machine left unfinished.

    ``kseg run`` executes its runs in its own process; killed (kill -9, a crash), it
    leaves them STARTED for ever, and no daemon watches an in-process run. They carry
    the host and process id that ran them, so a process that no longer exists is known.

    Returns
    -------
    list of str
        The run ids marked failed.
    """
    failed = []
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=_UNFINISHED)):
        run = record.dagster_run
        tags = run.tags
        if tags.get(LAUNCHED_BY_TAG) != "kseg-run" or tags.get("kseg/host") != _HOST:
            continue
        pid = tags.get("kseg/pid", "")
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            instance.report_run_failed(
                run, f"the kseg run process ({pid}) that executed this run is gone"
            )
            failed.append(run.run_id)
    return failed


def _max_file_bytes(env: Mapping[str, str]) -> int:
    raw = env.get(MAX_FILE_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_FILE_BYTES
    if not raw.isdigit() or int(raw) < 1:
        raise KsegError(f"{MAX_FILE_ENV} must be a positive number of bytes, got {raw!r}")
    return int(raw)


@dataclass
class RunSummary:
    """What ``kseg run`` did (also returned for tests and the benchmark)."""

    images: int = 0
    new: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    planned: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failed_checks: list[str] = field(default_factory=list)
    report_path: str | None = None
    seconds: float = 0.0


def _failures(result: dg.ExecuteInProcessResult) -> tuple[list[str], list[str]]:
    """(errors, failed checks) of a finished run, one line each."""
    errors, checks = [], []
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            if not evaluation.passed:
                where = evaluation.partition or evaluation.asset_key.to_user_string()
                checks.append(
                    f"{where}: check {evaluation.check_name} of "
                    f"{evaluation.asset_key.to_user_string()} failed: {evaluation.description}"
                )
        if event.event_type_value != "STEP_FAILURE":
            continue
        data = event.step_failure_data
        user = data.user_failure_data if data else None
        failed = user.metadata.get("failed_partitions") if user else None
        if failed is not None:
            errors += [item["error"] for item in failed.value]
        elif user is not None and user.description:
            errors.append(user.description)
        elif (
            data is not None and data.error is not None and "asset check" not in data.error.message
        ):
            errors.append(data.error.message.strip().splitlines()[-1])
    if not result.success and not errors and not checks:
        errors.append(f"run {result.run_id} failed")
    return errors, checks


def materialise(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    keys: list[str],
    *,
    batch_size: int = BATCH_SIZE,
    quiet: bool = True,
) -> tuple[list[str], list[str], list[str]]:
    """Run ``segment_images`` over ``keys`` in batches, splitting failed batches.

    Returns
    -------
    run_ids, errors, failed_checks : list of str
    """
    job = defs.resolve_job_def("segment_images")
    order = list(instance.get_dynamic_partitions(PARTITIONS_NAME))
    runs: list[str] = []
    errors: list[str] = []
    checks: list[str] = []

    def execute(first: str, last: str) -> dg.ExecuteInProcessResult:
        result = job.execute_in_process(
            run_config=_QUIET if quiet else None,
            instance=instance,
            tags={**run_tags_for(first, last), **_TAG},
            raise_on_error=False,
        )
        runs.append(result.run_id)
        return result

    for first, last in batches(order, set(keys), batch_size):
        result = execute(first, last)
        if result.success or first == last:
            found = _failures(result)
            errors += found[0]
            checks += found[1]
            continue
        members = order[order.index(first) : order.index(last) + 1]
        for key in members:  # one image at a time: the good ones complete
            found = _failures(execute(key, key))
            errors += found[0]
            checks += found[1]
    return runs, errors, checks


def build_report(
    instance: dg.DagsterInstance, defs: dg.Definitions, *, quiet: bool = True
) -> tuple[str | None, list[str], list[str]]:
    """Materialise ``segmentation_report``; returns (its path, errors, failed checks)."""
    job = defs.resolve_job_def("segmentation_report_job")
    result = job.execute_in_process(
        run_config=_QUIET if quiet else None, instance=instance, tags=_TAG, raise_on_error=False
    )
    errors, checks = _failures(result)
    if not result.success:
        return None, errors, checks
    path = result.asset_materializations_for_node(REPORT)[0].metadata["path"]
    return str(path.value), errors, checks


def run_command(
    incoming: str | None = None,
    all_: bool = False,
    *,
    store_root: str | None = None,
    dagster_home: str | os.PathLike[str] | None = None,
    instance: dg.DagsterInstance | None = None,
    project: ProjectSettings | None = None,
    batch_size: int = BATCH_SIZE,
    submit: bool = False,
    webserver: str | None = None,
    environ: Mapping[str, str] | None = None,
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
    project : ProjectSettings, optional
        The project settings (default: the ``KSEG_*`` environment variables).
    batch_size : int
        Partitions per run (in process; ``--submit`` takes ``$KSEG_BATCH_SIZE``).
    submit : bool
        Enqueue the runs on the deployment of ``webserver`` instead of executing them.
    webserver : str, optional
        Its URL (default ``$KSEG_WEBSERVER_URL``, else http://127.0.0.1:3000).
    environ : mapping, optional
        The environment to read (default ``os.environ``).
    out, err : text streams
        Default ``sys.stdout`` / ``sys.stderr``.

    Returns
    -------
    int
        0 when every image was materialised and every check passed, 1 if any file or
        check failed, 2 if the incoming folder or the settings are unusable.
    """
    from .definitions import build_defs

    env = os.environ if environ is None else environ
    out = out or sys.stdout
    err = err or sys.stderr
    started = time.perf_counter()
    try:
        storage = KsegStorage(
            incoming_dir=incoming or env.get(INCOMING_ENV) or DEFAULT_INCOMING,
            store_root=store_root or env.get(STORE_ENV) or DEFAULT_STORE,
            max_file_bytes=_max_file_bytes(env),
        )
        project = project or ProjectSettings.from_env(env)
        storage.check_layout()
    except KsegError as exc:
        print(f"kseg run: error: {exc}", file=err)
        return 2
    owned = instance is None
    try:
        instance = instance or open_instance(dagster_home)
    except KsegError as exc:
        print(f"kseg run: error: {exc}", file=err)
        return 2
    summary = RunSummary()
    try:
        abandoned = fail_abandoned_runs(instance)
        if abandoned:
            print(
                f"kseg run: marked {len(abandoned)} run(s) of a killed kseg run as failed",
                file=out,
            )
        found = survey(storage, instance, project)
        if found.scan is None:
            print(f"kseg run: error: incoming folder {storage.incoming()} does not exist", file=err)
            return 2
        summary.images = len(found.scan.images)
        summary.errors += [f"{found.scan.root / r.relpath}: {r.reason}" for r in found.scan.refused]
        summary.errors += [f"{found.scan.root}/{line}" for line in found.unreadable]
        relpaths = {image.key: image.relpath for image in found.scan.images}
        summary.errors += [
            f"{found.scan.root / relpaths[key]}: changed while it was read (still being "
            "written?); run kseg run again once it is complete"
            for key in found.waiting
            if key in relpaths
        ]
        known = set(found.registered)
        instance.add_dynamic_partitions(
            PARTITIONS_NAME, [key for key in found.files if key not in known]
        )
        wanted = plan(found, storage.store(), verify=True)
        summary.new, summary.stale = wanted.missing, list(wanted.stale)
        summary.fresh = list(wanted.fresh)
        summary.planned = list(found.files) if all_ else wanted.wanted
        # What needs no run is recorded now (a touched file's new time, say); the runs
        # record what they read themselves.
        for event in found.events:
            if event.partition not in summary.planned:
                instance.report_runless_asset_event(event)
        if submit:
            order = list(instance.get_dynamic_partitions(PARTITIONS_NAME))
            url = webserver or webserver_url(env)
            try:
                summary.runs = submit_runs(order, summary.planned, url=url, environ=env)
            except KsegError as exc:
                print(f"kseg run: error: {exc}", file=err)
                return 2
            for message in summary.errors:
                print(f"kseg run: error: {message}", file=err)
            print(
                f"kseg run: queued {len(summary.runs)} run(s) for {len(summary.planned)} "
                f"image(s) of {summary.images} in the run queue of {url}",
                file=out,
            )
            for run_id in summary.runs:
                print(f"kseg run: queued {run_id}", file=out)
            return 1 if summary.errors else 0
        defs = build_defs(storage, project)
        if summary.planned:
            runs, errors, checks = materialise(
                instance, defs, summary.planned, batch_size=batch_size
            )
            summary.runs += runs
            summary.errors += errors
            summary.failed_checks += checks
        summary.report_path, errors, checks = build_report(instance, defs)
        summary.errors += errors
        if summary.errors:  # the report lacks the images that failed: already said
            checks = [line for line in checks if "covers_every_image" not in line]
        summary.failed_checks += checks
        home = Path(instance.root_directory)
    finally:
        if owned:
            instance.dispose()
    summary.seconds = time.perf_counter() - started
    _print_summary(summary, found.scan.root, home, out, err)
    return 1 if summary.errors or summary.failed_checks else 0


def _print_summary(summary: RunSummary, root: Path, home: Path, out: TextIO, err: TextIO) -> None:
    for message in summary.errors:
        print(f"kseg run: error: {message}", file=err)
    for message in summary.failed_checks:
        print(f"kseg run: check failed: {message}", file=err)
    # Up to date: the images whose stored outputs were checked, not every image that is
    # neither new nor stale (a file the survey could not read was never compared).
    up_to_date = len(summary.fresh)
    unchecked = summary.images - len(summary.new) - len(summary.stale) - up_to_date
    print(
        f"kseg run: {summary.images} image(s) in {root}: {len(summary.new)} new, "
        f"{len(summary.stale)} stale, {up_to_date} up to date"
        + (f", {unchecked} not checked (see the errors above)" if unchecked > 0 else ""),
        file=out,
    )
    print(
        f"kseg run: processed {len(summary.planned)} image(s) in {len(summary.runs)} run(s), "
        f"{len(summary.errors)} error(s), {len(summary.failed_checks)} failed check(s), "
        f"{summary.seconds:.1f} s",
        file=out,
    )
    if summary.report_path:
        print(f"kseg run: report {summary.report_path}", file=out)
    kseg = Path(sys.executable).with_name("kseg")
    command = (
        f"{kseg} ui" if kseg.exists() else f"DAGSTER_HOME={home} dagster dev -w workspace.yaml"
    )
    print(f"kseg run: runs recorded in {home}; browse them with: {command}", file=out)
