"""One distributed stack for the session, stopped (and checked) even when a test fails.

Skipped with the reason when Postgres, Redis, SeaweedFS or a Python package of the
stack is missing (``scripts/test.sh`` installs them when it runs as root).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from assets import deploy

from .stack_helpers import FAST, WORKSPACE, new_folder, stop_and_check


@pytest.fixture(scope="session")
def stack() -> Iterator[deploy.Stack]:
    """The stack with two workers (``worker-1``, ``worker-2``) and fast sensors."""
    folder, ports = new_folder(), deploy.Ports.free()
    try:
        yield deploy.up(folder, workers=2, ports=ports, workspace=WORKSPACE, environment=FAST)
    finally:
        left = stop_and_check(folder, ports)
        shutil.rmtree(folder, ignore_errors=True)
        assert not left, f"left behind by the stack: {left}"
