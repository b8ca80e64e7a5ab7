"""``resegmentation_schedule``: a periodic sweep for stale, missing and failed images.

The sensor (:mod:`assets.sensors`) reacts to files, and automation
(:mod:`assets.automation`) to new data and code versions; this schedule is the
safety net that catches whatever they did not: outputs that are missing or damaged
in the store, partitions whose last run failed, images whose stored results were
made with other settings or code. It asks :func:`assets.planning.plan` (the same
planning ``kseg run`` uses) which registered images need work:

* **new**: no per-image asset was ever materialised (a failed or never-run image);
* **stale**: some step's recorded data version differs from the cache key derived
  from the file's current bytes, the default settings and the current code
  versions, or its stored output is missing or fails its SHA-256 check.

Everything else is left alone, so a nightly tick over an up-to-date folder
requests nothing. Images that are not registered yet are the sensor's to add;
images with a queued or running run are skipped (that run will settle them).

Runs: the ``segment_images`` job (in-process executor) with the default run
config, one run per contiguous range of up to :data:`~assets.keys.BATCH_SIZE`
wanted partitions (a single image gets a plain single-partition run). A failed
image is requested again at the next tick only, so never in a tight loop.

Configuration (read when the code location loads): ``KSEG_RESEGMENT_CRON``
(default ``0 2 * * *``, nightly at 02:00) and ``KSEG_RESEGMENT_TIMEZONE`` (default
``UTC``). ``KSEG_AUTOMATION_STATUS=stopped`` makes it start stopped.
"""

import os
from collections.abc import Mapping

import dagster as dg
from dagster._utils.schedules import is_valid_cron_schedule

from .automation import LAUNCHED_BY_TAG, default_status
from .config import SegmentationConfig
from .jobs import segment_images
from .keys import BATCH_SIZE, IMAGE_ASSETS, PARTITIONS_NAME
from .planning import batches, plan
from .storage import KsegStorage

__all__ = [
    "CRON_ENV",
    "DEFAULT_CRON",
    "DEFAULT_TIMEZONE",
    "SCHEDULE_NAME",
    "TIMEZONE_ENV",
    "build_resegmentation_schedule",
    "busy_partitions",
    "resegmentation_requests",
    "resegmentation_schedule",
]

SCHEDULE_NAME = "resegmentation_schedule"
CRON_ENV = "KSEG_RESEGMENT_CRON"
TIMEZONE_ENV = "KSEG_RESEGMENT_TIMEZONE"
DEFAULT_CRON = "0 2 * * *"
DEFAULT_TIMEZONE = "UTC"

_SELECTION = [dg.AssetKey(name) for name in IMAGE_ASSETS]
_ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]
_RANGE_START = "dagster/asset_partition_range_start"
_RANGE_END = "dagster/asset_partition_range_end"


def busy_partitions(instance: dg.DagsterInstance, order: list[str]) -> set[str]:
    """Partitions of ``images`` targeted by a queued or running run (any job).

    Parameters
    ----------
    instance : DagsterInstance
    order : list of str
        The registered partition keys in order (to expand partition ranges).
    """
    index = {key: i for i, key in enumerate(order)}
    busy: set[str] = set()
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=_ACTIVE)):
        tags = record.dagster_run.tags
        if "dagster/partition" in tags:
            busy.add(tags["dagster/partition"])
        start, end = tags.get(_RANGE_START), tags.get(_RANGE_END)
        if start in index and end in index:
            busy.update(order[index[start] : index[end] + 1])
    return busy


def resegmentation_requests(
    instance: dg.DagsterInstance,
    storage: KsegStorage,
    *,
    batch_size: int = BATCH_SIZE,
    tags: Mapping[str, str] | None = None,
) -> tuple[list[dg.RunRequest], str]:
    """The run requests for the registered images that are new, stale or failed.

    Parameters
    ----------
    instance : DagsterInstance
    storage : KsegStorage
    batch_size : int
        Most partitions per run.
    tags : mapping, optional
        Extra run tags.

    Returns
    -------
    requests : list of RunRequest
    summary : str
        What was found, for the tick's log or skip message.
    """
    scan = storage.scan()
    order = list(instance.get_dynamic_partitions(PARTITIONS_NAME))
    registered = set(order)
    busy = busy_partitions(instance, order)
    images = [image for image in scan.images if image.key in registered]
    candidates = [image for image in images if image.key not in busy]
    new, stale = plan(candidates, instance, storage, SegmentationConfig())
    wanted = set(new) | set(stale)
    base = {LAUNCHED_BY_TAG: SCHEDULE_NAME, **(tags or {})}
    requests = []
    for start, end in batches(order, wanted, batch_size):
        if start == end:
            requests.append(
                dg.RunRequest(
                    run_key=start, partition_key=start, asset_selection=_SELECTION, tags=base
                )
            )
        else:
            requests.append(
                dg.RunRequest(
                    run_key=f"{start}..{end}",
                    asset_selection=_SELECTION,
                    tags={**base, _RANGE_START: start, _RANGE_END: end},
                )
            )
    summary = (
        f"{len(images)} registered image(s): {len(new)} never materialised, {len(stale)} "
        f"stale, {len(images) - len(candidates)} busy, "
        f"{len(candidates) - len(wanted)} up to date; {len(requests)} run request(s)"
    )
    return requests, summary


def _cron(cron: str | None, environ: Mapping[str, str]) -> str:
    value = cron or environ.get(CRON_ENV, "").strip() or DEFAULT_CRON
    if not is_valid_cron_schedule(value):
        raise ValueError(f"{CRON_ENV}: {value!r} is not a valid cron schedule")
    return value


def build_resegmentation_schedule(
    *,
    cron: str | None = None,
    timezone: str | None = None,
    status: dg.DefaultScheduleStatus | None = None,
    batch_size: int = BATCH_SIZE,
) -> dg.ScheduleDefinition:
    """The ``resegmentation_schedule`` definition.

    Parameters
    ----------
    cron : str, optional
        Default ``$KSEG_RESEGMENT_CRON`` or ``0 2 * * *``.
    timezone : str, optional
        Default ``$KSEG_RESEGMENT_TIMEZONE`` or ``UTC``.
    status : DefaultScheduleStatus, optional
        Default RUNNING (``KSEG_AUTOMATION_STATUS=stopped``: STOPPED).
    batch_size : int
        Most partitions per run.

    Raises
    ------
    ValueError
        If the cron schedule is invalid.
    """
    schedule_cron = _cron(cron, os.environ)
    zone = timezone or os.environ.get(TIMEZONE_ENV, "").strip() or DEFAULT_TIMEZONE
    if status is None:
        running = default_status() == dg.DefaultSensorStatus.RUNNING
        status = dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED

    @dg.schedule(
        name=SCHEDULE_NAME,
        cron_schedule=schedule_cron,
        execution_timezone=zone,
        job=segment_images,
        default_status=status,
        description="Requests segment_images runs for the registered images whose outputs "
        "are missing, stale (settings or code changed) or failed; nothing for the others.",
    )
    def resegmentation_schedule(
        context: dg.ScheduleEvaluationContext, storage: KsegStorage
    ) -> list[dg.RunRequest] | dg.SkipReason:
        try:
            requests, summary = resegmentation_requests(
                context.instance, storage, batch_size=batch_size
            )
        except FileNotFoundError as exc:
            return dg.SkipReason(str(exc))
        context.log.info(summary)
        return requests or dg.SkipReason(summary)

    return resegmentation_schedule


#: The code location's schedule (cron and time zone from the environment).
resegmentation_schedule = build_resegmentation_schedule()
