"""The kseg code location: ``defs``, built by :func:`build_defs` (the one place it is wired).

Loaded by ``dagster dev`` (``[tool.dagster]`` / ``workspace.yaml``) and ``dg``
(``[tool.dg]``) from the repository root. ``kseg run`` and the tests build the same
definitions around their own storage resource.
"""

import dagster as dg

from .automation import kseg_automation_sensor
from .image_assets import source_image
from .jobs import JOBS
from .report import segmentation_report
from .schedules import resegmentation_schedule
from .sensors import incoming_images_sensor
from .steps import image_steps
from .storage import KsegStorage, default_storage

__all__ = ["build_defs", "defs"]


def build_defs(storage: KsegStorage | None = None) -> dg.Definitions:
    """The code location's definitions, with ``storage`` (default: environment or defaults)."""
    return dg.Definitions(
        assets=[source_image, image_steps, segmentation_report],
        jobs=JOBS,
        resources={"storage": storage if storage is not None else default_storage()},
        # RUNNING by default (KSEG_AUTOMATION_STATUS=stopped to start them stopped): the
        # incoming-folder sensor, the automation-condition sensor, the nightly sweep.
        sensors=[incoming_images_sensor, kseg_automation_sensor],
        schedules=[resegmentation_schedule],
        # Runs the automation sensor requests use the implicit asset job: in process, like
        # segment_images, instead of Dagster's default subprocess per step.
        executor=dg.in_process_executor,
    )


defs = build_defs()
