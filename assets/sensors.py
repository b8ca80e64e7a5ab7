"""The sensors: the incoming folder drives the partitions; failed batches are split.

``incoming_images_sensor``
--------------------------
One tick, in phases (each a function below):

1. **survey** the folder against Dagster's records (:func:`assets.changes.survey`:
   scan, look, hash what changed, settings, observations, deletions), bounded by
   ``max_files`` hashed and ``time_budget`` seconds per tick (the rest waits, so a tick
   never nears Dagster's 60 s limit);
2. **register** a partition for each new image, and **record** the observations of
   new or changed files and settings: automation (:mod:`assets.automation`) reacts to
   them and segments exactly those images;
3. **delete** the partitions of deleted files, moving their outputs (and own settings)
   to the store's ``trash/`` (:meth:`assets.storage.Store.trash`), and request a
   report run so the report drops them; registered keys that no kseg file can have
   (added from outside) are removed too;
4. **report** skipped files (unsupported, refused links, unreadable, unusable
   settings) once, when the list changes.

A missing incoming folder is a fault: nothing is added or removed. The sensor keeps no
state of its own besides a digest of the last skipped-file report: what it has seen is
in Dagster's observations.

``failed_batch_sensor``
-----------------------
A run over several images fails as a whole at the first step an image fails in (its
other images' outputs are stored). This sensor then requests one run per image of
that run, so the good images complete (their stored steps are cache hits) and the bad
one fails on its own, under its own name; single-image runs are never split again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import dagster as dg

from pipeline.errors import KsegError

from .automation import default_status, positive_int_env
from .changes import Survey, survey
from .incoming import is_valid_partition_key
from .jobs import segment_images
from .names import IMAGE_ASSETS, LAUNCHED_BY_TAG, PARTITION_TAG, REPORT
from .partitions import IMAGES, partitions_of_tags
from .settings import ProjectSettings
from .storage import KsegStorage, Store, StoreError

__all__ = [
    "FAILED_BATCH_SENSOR_NAME",
    "SENSOR_NAME",
    "SensorSettings",
    "TickReport",
    "build_failed_batch_sensor",
    "build_incoming_images_sensor",
    "evaluate_incoming",
]

SENSOR_NAME = "incoming_images_sensor"
FAILED_BATCH_SENSOR_NAME = "failed_batch_sensor"
INTERVAL_ENV = "KSEG_SENSOR_INTERVAL_SECONDS"
SETTLE_ENV = "KSEG_SENSOR_SETTLE_SECONDS"
MAX_FILES_ENV = "KSEG_SENSOR_MAX_FILES"
TIME_BUDGET_ENV = "KSEG_SENSOR_TIME_BUDGET_SECONDS"
DELETE_SHARE_ENV = "KSEG_SENSOR_MAX_DELETE_SHARE"
DELETE_CONFIRM_ENV = "KSEG_SENSOR_DELETE_CONFIRM_SECONDS"
#: Fewer vanished images than this are never a "mass" deletion.
MASS_DELETION_MIN = 10

_LISTED = 20  # skipped files named in one warning


def _float_env(name: str, default: float, environ: Mapping[str, str]) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not value >= 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, got {raw!r}")
    return value


def _share_env(name: str, default: float, environ: Mapping[str, str]) -> float:
    value = _float_env(name, default, environ)
    if value > 1:
        raise ValueError(f"{name} must be a share between 0 and 1, got {value!r}")
    return value


@dataclass(frozen=True)
class SensorSettings:
    """How often the sensor ticks and how much one tick may do.

    Attributes
    ----------
    interval_seconds : int
        Minimum seconds between ticks (``KSEG_SENSOR_INTERVAL_SECONDS``, default 30).
    settle_seconds : float
        A file modified less than this long ago waits for a later tick
        (``KSEG_SENSOR_SETTLE_SECONDS``, default 2).
    max_files : int
        Files hashed per tick (``KSEG_SENSOR_MAX_FILES``, default 500).
    time_budget : float
        Seconds of hashing per tick (``KSEG_SENSOR_TIME_BUDGET_SECONDS``, default 20).
    max_delete_share : float
        If more than this share of the registered images (and at least
        :data:`MASS_DELETION_MIN`) vanish at once, nothing is removed until they have
        stayed away for ``delete_confirm_seconds`` (``KSEG_SENSOR_MAX_DELETE_SHARE``,
        default 0.5; 1 removes whatever vanishes at once).
    delete_confirm_seconds : float
        How long a mass deletion must last before it is carried out
        (``KSEG_SENSOR_DELETE_CONFIRM_SECONDS``, default 3600).
    """

    interval_seconds: int = 30
    settle_seconds: float = 2.0
    max_files: int = 500
    time_budget: float = 20.0
    max_delete_share: float = 0.5
    delete_confirm_seconds: float = 3600.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SensorSettings:
        """The settings from the environment variables named above.

        Raises
        ------
        ValueError
            Naming the variable, if a value is invalid.
        """
        env = dict(os.environ if environ is None else environ)
        base = cls()
        return cls(
            interval_seconds=positive_int_env(INTERVAL_ENV, base.interval_seconds, env),
            settle_seconds=_float_env(SETTLE_ENV, base.settle_seconds, env),
            max_files=positive_int_env(MAX_FILES_ENV, base.max_files, env),
            time_budget=_float_env(TIME_BUDGET_ENV, base.time_budget, env),
            max_delete_share=_share_env(DELETE_SHARE_ENV, base.max_delete_share, env),
            delete_confirm_seconds=_float_env(DELETE_CONFIRM_ENV, base.delete_confirm_seconds, env),
        )


@dataclass
class TickReport:
    """What one tick did (for tests and the benchmark)."""

    survey: Survey | None = None
    added: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    trashed: dict[str, str] = field(default_factory=dict)
    deferred_deletions: list[str] = field(default_factory=list)
    held_deletions: list[str] = field(default_factory=list)
    skipped_new: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the tick's log."""
        found = self.survey.summary() if self.survey is not None else "no survey"
        deferred = len(self.deferred_deletions)
        held = len(self.held_deletions)
        return (
            f"{found}; {len(self.added)} partition(s) added, {len(self.deleted)} removed"
            + (f", {deferred} removal(s) deferred" if deferred else "")
            + (f", {held} removal(s) held: most images vanished at once" if held else "")
        )


def _register(found: Survey) -> list[str]:
    return [key for key in found.new if key in found.files]


def _hold_mass_deletion(
    found: Survey,
    settings: SensorSettings,
    before: dict,
    now: float,
    log: dg.DagsterLogManager,
    report: TickReport,
) -> dict | None:
    """Keep a sudden loss of most images from deleting them (an unmounted or emptied
    folder is a fault, not a deletion); returns the hold to remember, or None."""
    vanished = [key for key in found.deleted if is_valid_partition_key(key)]
    limit = max(MASS_DELETION_MIN, settings.max_delete_share * len(found.registered))
    if len(vanished) <= limit or settings.max_delete_share >= 1:
        return None
    digest = hashlib.sha256("\n".join(sorted(vanished)).encode("utf-8")).hexdigest()[:16]
    held = before.get("hold") or {}
    if held.get("digest") != digest:  # a new loss (or a different one): the wait starts now
        held = {"digest": digest, "count": len(vanished), "since": now}
    waited = now - float(held["since"])
    if waited >= settings.delete_confirm_seconds:
        log.warning(
            f"{len(vanished)} images have been gone from {found.scan.root} for {waited:.0f} s: "
            "removing them now"
        )
        return None
    report.held_deletions = vanished
    found.deleted = [key for key in found.deleted if key not in set(vanished)]
    log.warning(
        f"{len(vanished)} of {len(found.registered)} images vanished from {found.scan.root} at "
        f"once: nothing is removed (is the folder unmounted or being moved?). If this is "
        f"intended they are removed once gone for {settings.delete_confirm_seconds:.0f} s "
        f"({DELETE_CONFIRM_ENV}), or at once with {DELETE_SHARE_ENV}=1"
    )
    return held


def _delete(
    found: Survey, store: Store, log: dg.DagsterLogManager, report: TickReport
) -> list[str]:
    removed = []
    for key in found.deleted:
        if not is_valid_partition_key(key):  # registered from outside: no file can map to it
            shown = repr(key[:80]) + (f" ({len(key)} characters)" if len(key) > 80 else "")
            log.warning(f"removing partition {shown}: no kseg image can have this key")
            removed.append(key)
            continue
        try:
            where = store.trash(key)
        except StoreError as exc:  # a run holds the image: try again next tick
            log.info(f"{key}: outputs not moved to the trash yet ({exc})")
            report.deferred_deletions.append(key)
            continue
        if where:
            report.trashed[key] = where
            log.info(f"{key}: image deleted; its outputs were moved to {where}")
        removed.append(key)
    return removed


def _skipped(found: Survey) -> list[str]:
    assert found.scan is not None
    listed = [f"{path} (unsupported file type)" for path in found.scan.unsupported]
    listed += [f"{item.relpath} ({item.reason})" for item in found.scan.refused]
    return sorted([*listed, *found.unreadable])


def _report_skipped(
    skipped: list[str], before: dict, log: dg.DagsterLogManager, report: TickReport
) -> str:
    digest = hashlib.sha256("\n".join(skipped).encode("utf-8")).hexdigest()[:16] if skipped else ""
    if digest != before.get("skipped", ""):
        known = set(before.get("listed", []))
        report.skipped_new = [item for item in skipped if item not in known]
    if report.skipped_new:
        shown = "; ".join(report.skipped_new[:_LISTED])
        more = len(report.skipped_new) - _LISTED
        log.warning(
            f"skipping {len(report.skipped_new)} file(s): {shown}"
            + (f"; and {more} more" if more > 0 else "")
        )
    return digest


def _cursor(text: str | None) -> dict:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def evaluate_incoming(
    context: dg.SensorEvaluationContext,
    storage: KsegStorage,
    project: ProjectSettings,
    settings: SensorSettings,
    *,
    clock: Callable[[], float] = time.time,
) -> tuple[dg.SensorResult, TickReport]:
    """One tick of ``incoming_images_sensor`` (see the module docstring).

    Returns
    -------
    result : SensorResult
    report : TickReport
    """
    report = TickReport()
    before = _cursor(context.cursor)
    try:
        found = survey(
            storage,
            context.instance,
            project,
            settle_seconds=settings.settle_seconds,
            max_files=settings.max_files,
            time_budget=settings.time_budget,
            clock=clock,
        )
    except KsegError as exc:  # a configuration fault: nothing is added or removed
        context.log.error(str(exc))
        return dg.SensorResult(skip_reason=str(exc), cursor=context.cursor), report
    report.survey = found
    if found.scan is None:
        message = (
            f"incoming folder {storage.incoming()} does not exist; nothing is added or removed"
        )
        context.log.warning(message)
        return dg.SensorResult(skip_reason=message, cursor=context.cursor), report

    report.added = _register(found)
    hold = _hold_mass_deletion(found, settings, before, clock(), context.log, report)
    report.deleted = _delete(found, storage.store(), context.log, report)
    skipped = _skipped(found)
    digest = _report_skipped(skipped, before, context.log, report)

    requests = []
    if report.deleted:
        token = hashlib.sha256("\n".join(sorted(report.deleted)).encode("utf-8")).hexdigest()[:16]
        requests.append(
            dg.RunRequest(
                run_key=f"report-after-removal:{token}",
                asset_selection=[dg.AssetKey(REPORT)],
                tags={LAUNCHED_BY_TAG: SENSOR_NAME},
            )
        )
    partition_requests = []
    if report.added:
        partition_requests.append(IMAGES.build_add_request(report.added))
    if report.deleted:
        partition_requests.append(IMAGES.build_delete_request(report.deleted))
    events = [e for e in found.events if e.partition in found.files]
    context.log.info(report.summary())
    state = {"v": 2, "skipped": digest, "listed": skipped[:200], "hold": hold}
    cursor = json.dumps(state, separators=(",", ":"))
    nothing = not (requests or partition_requests or events)
    return (
        dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=partition_requests,
            asset_events=events,
            cursor=cursor,
            skip_reason=report.summary() if nothing else None,
        ),
        report,
    )


def build_incoming_images_sensor(
    settings: SensorSettings | None = None, *, status: dg.DefaultSensorStatus | None = None
) -> dg.SensorDefinition:
    """The ``incoming_images_sensor`` definition.

    Parameters
    ----------
    settings : SensorSettings, optional
        Default: :meth:`SensorSettings.from_env`.
    status : DefaultSensorStatus, optional
        Default: :func:`assets.automation.default_status` (RUNNING).
    """
    tick = settings or SensorSettings.from_env()

    @dg.sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=tick.interval_seconds,
        default_status=status if status is not None else default_status(),
        asset_selection=[dg.AssetKey(REPORT)],
        description="Registers a partition for every image in the incoming folder and records "
        "each new or changed file and settings, which automation then segments; removes the "
        "partitions of deleted images (their outputs go to the store's trash/).",
    )
    def incoming_images_sensor(
        context: dg.SensorEvaluationContext,
        storage: KsegStorage,
        settings: dg.ResourceParam[ProjectSettings],
    ) -> dg.SensorResult:
        result, _ = evaluate_incoming(context, storage, settings, tick)
        return result

    return incoming_images_sensor


def split_requests(run: dg.DagsterRun, order: list[str]) -> list[dg.RunRequest]:
    """One run request per image of a failed run over several images (else none)."""
    if PARTITION_TAG in run.tags:
        return []
    partitions = partitions_of_tags(run.tags, order)
    every = [dg.AssetKey(name) for name in IMAGE_ASSETS]  # a whole-job run selects them all
    selected = [key for key in (run.asset_selection or every) if key.path[-1] in IMAGE_ASSETS]
    if len(partitions) < 2 or not selected:
        return []
    return [
        dg.RunRequest(
            run_key=f"split:{run.run_id}:{key}",
            partition_key=key,
            asset_selection=sorted(selected, key=lambda k: IMAGE_ASSETS.index(k.path[-1])),
            tags={LAUNCHED_BY_TAG: FAILED_BATCH_SENSOR_NAME, "kseg/split_from": run.run_id},
        )
        for key in partitions
    ]


def build_failed_batch_sensor(
    *, status: dg.DefaultSensorStatus | None = None
) -> dg.RunStatusSensorDefinition:
    """The sensor that re-requests a failed batch image by image (see the module docstring)."""

    @dg.run_failure_sensor(
        name=FAILED_BATCH_SENSOR_NAME,
        request_job=segment_images,
        default_status=status if status is not None else default_status(),
        minimum_interval_seconds=10,
        description="When a run over several images fails, requests one run per image, so "
        "the good ones complete and the failing one is named on its own.",
    )
    def failed_batch_sensor(context: dg.RunFailureSensorContext):
        order = list(context.instance.get_dynamic_partitions(IMAGES.name))
        requests = split_requests(context.dagster_run, order)
        if requests:
            context.log.info(
                f"run {context.dagster_run.run_id} failed over {len(requests)} images: "
                "requesting one run per image"
            )
        yield from requests

    return failed_batch_sensor
