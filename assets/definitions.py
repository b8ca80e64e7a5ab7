"""The kseg code location: ``defs``, built by :func:`build_defs` (the one place it is wired).

Loaded by ``dagster dev`` (``[tool.dagster]`` / ``workspace.yaml``) and ``dg``
(``[tool.dg]``) from the repository root. ``kseg run`` and the tests build the same
definitions around their own storage and settings.
"""

import dagster as dg

from pipeline.settings import SegmentSettings

from .automation import build_automation_sensor, positive_int_env
from .jobs import JOBS
from .names import BATCH_ENV, BATCH_SIZE
from .report import segmentation_report
from .schedules import build_resegmentation_schedule
from .sensors import build_failed_batch_sensor, build_incoming_images_sensor
from .settings import ProjectSettings
from .sources import observe_sources
from .steps import STEPS
from .steps.asset import step_asset
from .storage import KsegStorage, default_storage

__all__ = ["build_defs", "defs", "settings_resource"]


def settings_resource(project: ProjectSettings) -> dg.ResourceDefinition:
    """The ``settings`` resource: the project settings, with an empty config schema, so a
    run's config cannot change them (see :class:`assets.settings.ProjectSettings`)."""
    return dg.ResourceDefinition(
        resource_fn=lambda _: project, config_schema={}, description=project.describe()
    )


class _NoValueIOManager(dg.IOManager):
    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        if obj is not None:
            raise TypeError(f"{context.asset_key}: kseg assets return no value, got {type(obj)}")

    def load_input(self, context: dg.InputContext) -> None:
        return None


@dg.io_manager(
    description="Stores nothing: kseg's steps write their outputs to the store themselves "
    "(files plus checksummed manifests) and pass no value between steps; nothing is pickled."
)
def no_value_io_manager(_: dg.InitResourceContext) -> dg.IOManager:
    """The code location's IO manager (see its description)."""
    return _NoValueIOManager()


def build_defs(
    storage: KsegStorage | None = None, settings: SegmentSettings | ProjectSettings | None = None
) -> dg.Definitions:
    """The code location's definitions.

    Parameters
    ----------
    storage : KsegStorage, optional
        Default: the environment (``KSEG_INCOMING_DIR``, ``KSEG_STORE_ROOT``) or defaults.
    settings : SegmentSettings or ProjectSettings, optional
        The project settings. Default: the ``KSEG_*`` environment variables, else
        kseg's defaults (validated here: an invalid variable stops the code location
        from loading, naming every bad one).

    Runs of backfills, automation and the schedule take up to ``$KSEG_BATCH_SIZE``
    images each (default :data:`~assets.names.BATCH_SIZE`).
    """
    batch_size = positive_int_env(BATCH_ENV, BATCH_SIZE)
    if settings is None:
        project = ProjectSettings.from_env()
    elif isinstance(settings, ProjectSettings):
        project = settings
    else:
        project = ProjectSettings(settings.validate(), "definitions")
    return dg.Definitions(
        assets=[
            observe_sources,
            *(step_asset(step, batch_size=batch_size) for step in STEPS.values()),
            segmentation_report,
        ],
        jobs=JOBS,
        resources={
            "storage": storage if storage is not None else default_storage(),
            "settings": settings_resource(project),
            "io_manager": no_value_io_manager,
        },
        # RUNNING by default (KSEG_AUTOMATION_STATUS=stopped to start them stopped).
        sensors=[
            build_incoming_images_sensor(),
            build_automation_sensor(),
            build_failed_batch_sensor(),
        ],
        schedules=[build_resegmentation_schedule(batch_size=batch_size)],
        # Runs automation requests use the implicit asset job: in process, like
        # segment_images, instead of Dagster's default subprocess per step.
        executor=dg.in_process_executor,
    )


defs = build_defs()
