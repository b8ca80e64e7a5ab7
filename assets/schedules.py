"""``resegmentation_schedule``: the nightly safety net for missing, stale and failed images.

The sensor records changes as they happen and automation acts on them; this schedule
catches what they did not: outputs missing or damaged in the store, images whose last
run failed, images whose outputs were made with other bytes, settings or code. It uses
the same change detection as the sensor and ``kseg run`` (:mod:`assets.changes`):

* **missing**: no output of the image is in the store (a failed or never-run image);
* **stale**: some step's stored output has another cache key than the file's current
  bytes, the image's effective settings and the current code versions give, or a file
  of it is missing or has another size. (A damaged file of the same size is found when
  a run reuses it: every reuse checks the SHA-256.)

Everything else is left alone, so a nightly tick over an up-to-date folder requests
nothing. Images with a queued or running run are skipped (that run settles them).
Runs: the ``segment_images`` job, one per contiguous range of up to
:data:`~assets.names.BATCH_SIZE` wanted partitions.

Configuration (read when the code location loads): ``KSEG_RESEGMENT_CRON`` (default
``0 2 * * *``) and ``KSEG_RESEGMENT_TIMEZONE`` (default ``UTC``).
"""

import os

import dagster as dg

from pipeline.errors import KsegError

from .automation import default_status
from .changes import plan, survey
from .jobs import segment_images
from .names import BATCH_SIZE, IMAGE_ASSETS, LAUNCHED_BY_TAG
from .partitions import batches, partitions_of_tags, run_tags_for
from .settings import ProjectSettings
from .storage import KsegStorage

__all__ = [
    "CRON_ENV",
    "DEFAULT_CRON",
    "SCHEDULE_NAME",
    "TIMEZONE_ENV",
    "build_resegmentation_schedule",
    "busy_partitions",
    "resegmentation_requests",
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


def busy_partitions(instance: dg.DagsterInstance, order: list[str]) -> set[str]:
    """Partitions targeted by a queued or running run (any job)."""
    busy: set[str] = set()
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=_ACTIVE)):
        busy.update(partitions_of_tags(record.dagster_run.tags, order))
    return busy


def resegmentation_requests(
    instance: dg.DagsterInstance,
    storage: KsegStorage,
    project: ProjectSettings,
    *,
    batch_size: int = BATCH_SIZE,
) -> tuple[list[dg.RunRequest], str]:
    """The run requests for the registered images that are missing, stale or failed.

    Returns
    -------
    requests : list of RunRequest
    summary : str
        What was found, for the tick's log or skip message.

    Raises
    ------
    FileNotFoundError
        If the incoming folder does not exist.
    """
    found = survey(storage, instance, project)
    if found.scan is None:
        raise FileNotFoundError(f"incoming folder {storage.incoming()} does not exist")
    registered = set(found.registered)
    busy = busy_partitions(instance, found.registered)
    found.files = {k: v for k, v in found.files.items() if k in registered and k not in busy}
    wanted = plan(found, storage.store(), verify=False)
    requests = [
        dg.RunRequest(
            run_key=f"{first}..{last}",
            partition_key=first if first == last else None,
            asset_selection=_SELECTION,
            tags={**run_tags_for(first, last), LAUNCHED_BY_TAG: SCHEDULE_NAME},
        )
        for first, last in batches(found.registered, set(wanted.wanted), batch_size)
    ]
    summary = (
        f"{len(registered)} registered image(s): {len(wanted.missing)} without outputs, "
        f"{len(wanted.stale)} stale, {len(busy & registered)} busy, {len(wanted.fresh)} up to "
        f"date; {len(requests)} run request(s)"
    )
    return requests, summary


def build_resegmentation_schedule(
    *,
    cron: str | None = None,
    timezone: str | None = None,
    status: dg.DefaultScheduleStatus | None = None,
    batch_size: int = BATCH_SIZE,
) -> dg.ScheduleDefinition:
    """The ``resegmentation_schedule`` definition.

    Raises
    ------
    ValueError
        If the cron schedule is invalid (naming ``KSEG_RESEGMENT_CRON``).
    """
    schedule_cron = cron or os.environ.get(CRON_ENV, "").strip() or DEFAULT_CRON
    zone = timezone or os.environ.get(TIMEZONE_ENV, "").strip() or DEFAULT_TIMEZONE
    if status is None:
        running = default_status() == dg.DefaultSensorStatus.RUNNING
        status = dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED

    def resegmentation_schedule(
        context: dg.ScheduleEvaluationContext,
        storage: KsegStorage,
        settings: dg.ResourceParam[ProjectSettings],
    ):
        try:
            requests, summary = resegmentation_requests(
                context.instance, storage, settings, batch_size=batch_size
            )
        except (FileNotFoundError, KsegError) as exc:
            context.log.error(str(exc))
            return dg.SkipReason(str(exc))
        context.log.info(summary)
        return requests or dg.SkipReason(summary)

    try:
        return dg.schedule(
            name=SCHEDULE_NAME,
            cron_schedule=schedule_cron,
            execution_timezone=zone,
            job=segment_images,
            default_status=status,
            description="Requests segment_images runs for the registered images whose "
            "outputs are missing, stale (file, settings or code changed) or failed; nothing "
            "for the others.",
        )(resegmentation_schedule)
    except dg.DagsterInvalidDefinitionError as exc:
        raise ValueError(f"{CRON_ENV}: {schedule_cron!r} is not a valid cron schedule") from exc
