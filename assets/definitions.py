"""The kseg code location: ``defs``, built by :func:`build_defs` (the one place it is wired).

Loaded by ``dagster dev`` (``[tool.dagster]`` / ``workspace.yaml``) and ``dg``
(``[tool.dg]``) from the repository root. ``kseg run`` and the tests build the same
definitions around their own storage resource.
"""

import dagster as dg

from .image_assets import source_image
from .jobs import JOBS
from .report import segmentation_report
from .steps import image_steps
from .storage import KsegStorage, default_storage

__all__ = ["build_defs", "defs"]


def build_defs(storage: KsegStorage | None = None) -> dg.Definitions:
    """The code location's definitions, with ``storage`` (default: environment or defaults)."""
    return dg.Definitions(
        assets=[source_image, image_steps, segmentation_report],
        jobs=JOBS,
        resources={"storage": storage if storage is not None else default_storage()},
    )


defs = build_defs()
