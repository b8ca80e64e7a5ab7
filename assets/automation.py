"""Who starts which work, and the automation conditions that do most of it.

* :mod:`assets.sensors` (``incoming_images_sensor``) watches the incoming folder: it
  registers a partition for each new image, records an observation of its
  ``source_image`` (the file's SHA-256) and ``image_settings`` (its effective
  settings' version) whenever either changes, and removes the partitions of deleted
  files. It launches no segmentation run itself.
* **Automation** (this module) launches the runs: Dagster's declarative automation
  re-materialises a per-image step when an input got a new version (a new or replaced
  file, changed settings, a step re-materialised by hand) or when the step's code
  version changed, partition by partition; the steps downstream follow in the same
  run. Several images at once become one backfill whose runs take up to
  :data:`~assets.names.BATCH_SIZE` images each, all steps in one run.
* :mod:`assets.schedules` (``resegmentation_schedule``) is the nightly safety net:
  outputs missing or damaged in the store, and images whose last run failed.

The conditions are Dagster's ``eager()`` spelt out (without its time-window clause,
which does not apply to dynamic partitions) plus ``code_version_changed()``::

    ((newly_missing | any_deps_updated | code_version_changed).since_last_handled()
     | initial_evaluation & missing)
    & ~any_deps_missing & ~any_deps_in_progress & ~in_progress

``since_last_handled`` latches a trigger until the partition is requested or
materialised, so one trigger requests one run. On its very first evaluation (a new
instance, a reset cursor) automation also takes every image that has no output yet,
which ``eager()`` alone would leave to the nightly schedule; a failed run is not retried in a loop
(the partition is handled when requested; it is retried on its next trigger or by the
nightly schedule). The report reacts to images once they are materialised (not when
they are requested), without ``any_deps_missing`` (one failed image must not stop it
from following the others).
"""

import os

import dagster as dg

from .names import IMAGE_ASSETS, LAUNCHED_BY_TAG, REPORT

__all__ = [
    "AUTOMATION_INTERVAL_ENV",
    "AUTOMATION_SENSOR_NAME",
    "IMAGE_CONDITION",
    "REPORT_CONDITION",
    "STATUS_ENV",
    "build_automation_sensor",
    "default_status",
    "positive_int_env",
]

#: Name of the automation-condition sensor of the code location.
AUTOMATION_SENSOR_NAME = "kseg_automation_sensor"
#: Seconds between evaluations of the automation conditions (default 30).
AUTOMATION_INTERVAL_ENV = "KSEG_AUTOMATION_INTERVAL_SECONDS"
#: ``running`` (default) or ``stopped``: the default status of kseg's sensors and schedule.
STATUS_ENV = "KSEG_AUTOMATION_STATUS"

_DEFAULT_INTERVAL = 30
_A = dg.AutomationCondition

_TRIGGERS = (_A.newly_missing() | _A.any_deps_updated() | _A.code_version_changed()).with_label(
    "new, input updated or code version changed"
)

#: Re-materialise a per-image step when it is new, an input has a new version, or its
#: code version changed (see the module docstring).
IMAGE_CONDITION = (
    (
        _TRIGGERS.since_last_handled()
        | (_A.initial_evaluation() & _A.missing()).with_label("missing when automation starts")
    )
    & ~_A.any_deps_missing()
    & ~_A.any_deps_in_progress()
    & ~_A.in_progress()
).with_label("eager, and on a code version change")

#: Rebuild the report once an image's outputs changed (not when they are merely
#: requested: it would be built before them). Deletions: the sensor asks for it.
REPORT_CONDITION = (
    (
        _A.newly_missing()
        | _A.any_deps_match(_A.newly_updated()).with_label("any image updated")
        | _A.code_version_changed()
    ).since_last_handled()
    & ~_A.any_deps_in_progress()
    & ~_A.in_progress()
).with_label("after any image's outputs change")


def default_status(environ: dict[str, str] | None = None) -> dg.DefaultSensorStatus:
    """The default status of kseg's sensors: RUNNING unless ``KSEG_AUTOMATION_STATUS=stopped``.

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
    """The sensor that evaluates the automation conditions, RUNNING by default.

    Parameters
    ----------
    minimum_interval_seconds : int, optional
        Default: ``$KSEG_AUTOMATION_INTERVAL_SECONDS`` or 30.
    status : DefaultSensorStatus, optional
        Default: :func:`default_status`.
    """
    return dg.AutomationConditionSensorDefinition(
        AUTOMATION_SENSOR_NAME,
        target=dg.AssetSelection.assets(*IMAGE_ASSETS, REPORT),
        default_status=status if status is not None else default_status(),
        minimum_interval_seconds=minimum_interval_seconds
        or positive_int_env(AUTOMATION_INTERVAL_ENV, _DEFAULT_INTERVAL),
        description="Segments each new or changed image, and re-materialises exactly the "
        "steps whose inputs (file, settings, upstream outputs) or code changed; then the report.",
        run_tags={LAUNCHED_BY_TAG: AUTOMATION_SENSOR_NAME},
    )
