"""Declarative automation of the per-image assets, and the sensor that evaluates it.

Who starts which work
---------------------
* :mod:`assets.sensors` (``incoming_images_sensor``) owns *files*: it registers a
  partition for a new image, requests a ``segment_images`` run for a new or changed
  file, and removes the partition of a deleted file.
* :mod:`assets.schedules` (``resegmentation_schedule``) owns the *nightly sweep*:
  missing, stale and failed partitions, whatever the reason.
* This module owns *reactions inside the graph*: when a step's code version changes,
  or an input's data version changes outside a run that also recomputed this step
  (an observation of a replaced file by the ``observe_images`` job or the UI, a
  single step re-materialised by hand), exactly the affected steps and the steps
  downstream of them are re-materialised, partition by partition.

The condition
-------------
:data:`IMAGE_AUTOMATION_CONDITION` is Dagster's ``eager()`` without its
``newly_missing`` trigger, plus ``code_version_changed()``, minus failed partitions,
and with kseg's own runs left out of "a dependency was updated"::

    (deps_updated | code_version_changed).since_last_handled()
    & ~any_deps_missing & ~any_deps_in_progress & ~in_progress & ~execution_failed

    deps_updated = any_deps_match(
        newly_updated & ~all_new_updates_have_run_tags({"kseg/launched_by"})
        | will_be_requested)

* Every run kseg launches (the sensor's, the schedule's, automation's own and
  ``kseg run``'s) carries the run tag ``kseg/launched_by`` and recomputes every step
  it selects, downstream included, so its updates must not trigger anything.
  Dagster's ``any_deps_updated`` tries to ignore such updates with
  ``executed_with_root_target``, but in 1.13 that looks only at the asset's single
  latest materialisation, whatever its partition, and relies otherwise on the step
  being updated in the same evaluation: an evaluation that reads the event log
  while a run is between two steps, and the run status after the run ended, would
  request the rest of the image a second time. Filtering by run tag has no such
  window. A step re-materialised from the UI (no tag) still triggers exactly the
  steps downstream of it.
* For the observable ``source_image`` only a *new data version* (another SHA-256)
  counts as an update, so re-observing unchanged files requests nothing; an
  observation of a replaced file (the ``observe_images`` job, the UI) requests the
  image's steps. (The tag filter looks at materialisations only; the observation a
  kseg run makes is followed by that run's own ``raw_image`` within the same step.)
* ``code_version_changed`` fires once, on the first evaluation after the asset's
  code version changed, for every partition; the steps downstream follow through
  ``will_be_requested`` in the same evaluation, the steps upstream do not run.
* ``newly_missing`` is left out on purpose: new partitions are the sensor's (it
  requests their run in the same tick it adds them) and missing ones the
  schedule's.

Failures are never retried by automation: ``execution_failed`` excludes a partition
whose latest run failed before materialising it (the partitions shown as failed in
the UI). Without it, an image whose run failed after its source was observed would
be requested once more as soon as that run ended. Such an image is retried when its
file changes (the sensor) or by the nightly schedule, never in a loop; Dagster's run
retries are not enabled. ``since_last_handled`` is also reset when automation
*requests* a partition, so nothing is requested twice for one trigger.

Runs requested by the automation sensor use the implicit asset job, whose
executor is the code location's default, in process (see
:func:`assets.definitions.build_defs`), with the default run config.
"""

import os

import dagster as dg

from .keys import IMAGE_ASSETS

__all__ = [
    "AUTOMATION_INTERVAL_ENV",
    "AUTOMATION_SENSOR_NAME",
    "IMAGE_AUTOMATION_CONDITION",
    "LAUNCHED_BY_TAG",
    "STATUS_ENV",
    "build_automation_sensor",
    "default_status",
    "kseg_automation_sensor",
    "positive_int_env",
]

#: Name of the automation-condition sensor of the code location.
AUTOMATION_SENSOR_NAME = "kseg_automation_sensor"
#: Seconds between evaluations of the automation conditions (default 30).
AUTOMATION_INTERVAL_ENV = "KSEG_AUTOMATION_INTERVAL_SECONDS"
#: ``running`` (default) or ``stopped``: the default status of kseg's sensors and schedule.
STATUS_ENV = "KSEG_AUTOMATION_STATUS"

#: Run tag set by every run kseg launches itself (sensor, schedule, automation, ``kseg run``).
LAUNCHED_BY_TAG = "kseg/launched_by"

_DEFAULT_INTERVAL = 30

#: A dependency updated outside kseg's own runs, or requested in this same evaluation.
_DEPS_UPDATED = dg.AutomationCondition.any_deps_match(
    (
        dg.AutomationCondition.newly_updated()
        & ~dg.AutomationCondition.all_new_updates_have_run_tags(tag_keys={LAUNCHED_BY_TAG})
    ).with_label("newly updated outside kseg's runs")
    | dg.AutomationCondition.will_be_requested()
).with_label("any_deps_updated")

#: Re-materialise a per-image step when an input's data version or its own code version
#: changes; see the module docstring.
IMAGE_AUTOMATION_CONDITION = (
    (_DEPS_UPDATED | dg.AutomationCondition.code_version_changed()).since_last_handled()
    & ~dg.AutomationCondition.any_deps_missing()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
    & ~dg.AutomationCondition.execution_failed()
).with_label("new input data version or code version")


def default_status(environ: dict[str, str] | None = None) -> dg.DefaultSensorStatus:
    """The default status of kseg's sensors: RUNNING unless ``KSEG_AUTOMATION_STATUS=stopped``.

    Parameters
    ----------
    environ : dict, optional
        The environment to read (default ``os.environ``).

    Raises
    ------
    ValueError
        If the variable is set to anything but ``running`` or ``stopped``.
    """
    value = (environ if environ is not None else os.environ).get(STATUS_ENV, "running")
    value = value.strip().lower()
    if value not in ("running", "stopped"):
        raise ValueError(f"{STATUS_ENV} must be 'running' or 'stopped', got {value!r}")
    return dg.DefaultSensorStatus.RUNNING if value == "running" else dg.DefaultSensorStatus.STOPPED


def positive_int_env(name: str, default: int, environ: dict[str, str] | None = None) -> int:
    """A positive integer from the environment, or ``default`` when unset or empty.

    Raises
    ------
    ValueError
        Naming the variable, if its value is not a positive integer.
    """
    raw = (environ if environ is not None else os.environ).get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return value


def build_automation_sensor(
    *,
    minimum_interval_seconds: int | None = None,
    status: dg.DefaultSensorStatus | None = None,
) -> dg.AutomationConditionSensorDefinition:
    """The sensor that evaluates :data:`IMAGE_AUTOMATION_CONDITION`, RUNNING by default.

    Parameters
    ----------
    minimum_interval_seconds : int, optional
        Default: ``$KSEG_AUTOMATION_INTERVAL_SECONDS`` or 30.
    status : DefaultSensorStatus, optional
        Default: :func:`default_status`.
    """
    return dg.AutomationConditionSensorDefinition(
        AUTOMATION_SENSOR_NAME,
        target=dg.AssetSelection.assets(*IMAGE_ASSETS),
        default_status=status if status is not None else default_status(),
        minimum_interval_seconds=minimum_interval_seconds
        or positive_int_env(AUTOMATION_INTERVAL_ENV, _DEFAULT_INTERVAL),
        description="Re-materialises exactly the per-image steps whose inputs' data versions "
        "or own code versions changed.",
        run_tags={LAUNCHED_BY_TAG: AUTOMATION_SENSOR_NAME},
    )


#: The code location's automation sensor.
kseg_automation_sensor = build_automation_sensor()
