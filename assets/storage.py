"""The storage resource: where the incoming images are and where outputs go.

``KsegStorage`` is the only place that knows these locations. Both come from the
environment through :class:`dagster.EnvVar` (``KSEG_INCOMING_DIR`` and
``KSEG_STORE_ROOT``) with project-local defaults, ``data/incoming`` and
``data/store`` under the project root. The storage root may be any fsspec URL
(``s3://...``, ``gs://...``, ``memory://...``) through universal-pathlib; the
incoming folder is local (links and paths are checked against it).
"""

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from .incoming import Scan, scan_incoming
from .store import Store

__all__ = [
    "INCOMING_ENV",
    "PROJECT_ROOT",
    "STORE_ENV",
    "KsegStorage",
    "default_storage",
]

INCOMING_ENV = "KSEG_INCOMING_DIR"
STORE_ENV = "KSEG_STORE_ROOT"


def _project_root() -> Path:
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pyproject.toml").is_file() else Path.cwd()


#: The repository root (where ``pyproject.toml`` is), or the working directory.
PROJECT_ROOT = _project_root()
DEFAULT_INCOMING = str(PROJECT_ROOT / "data" / "incoming")
DEFAULT_STORE = str(PROJECT_ROOT / "data" / "store")


class KsegStorage(dg.ConfigurableResource):
    """Incoming folder and storage root of the kseg pipeline."""

    incoming_dir: str = Field(
        default=DEFAULT_INCOMING,
        description=f"Folder scanned for images (env {INCOMING_ENV}; default data/incoming).",
    )
    store_root: str = Field(
        default=DEFAULT_STORE,
        description=f"Folder or fsspec URL for every output (env {STORE_ENV}; default data/store).",
    )

    def store(self) -> Store:
        """The output store under :attr:`store_root`."""
        return Store(self.store_root)

    def incoming(self) -> Path:
        """The incoming folder as an absolute local path."""
        return Path(self.incoming_dir).expanduser().absolute()

    def scan(self) -> Scan:
        """Scan the incoming folder (see :func:`assets.incoming.scan_incoming`)."""
        return scan_incoming(self.incoming())


def _env_or_default(name: str, default: str) -> str:
    # EnvVar has no default (dagster-io/dagster#16232): a set variable is passed as an
    # EnvVar, resolved when the resource is initialised; otherwise the project default.
    return dg.EnvVar(name) if name in os.environ else default


def default_storage() -> KsegStorage:
    """The resource used by the code location: environment variables, else defaults."""
    return KsegStorage(
        incoming_dir=_env_or_default(INCOMING_ENV, DEFAULT_INCOMING),
        store_root=_env_or_default(STORE_ENV, DEFAULT_STORE),
    )
