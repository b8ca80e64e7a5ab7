"""Fixtures shared by the Dagster and robustness tests: a temp incoming folder, storage,
a real Dagster instance. Dagster is imported only when a test asks for it, so the engine
tests stay free of it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def incoming(tmp_path: Path) -> Path:
    folder = tmp_path / "incoming"
    folder.mkdir()
    return folder


@pytest.fixture
def storage(tmp_path: Path, incoming: Path):
    from assets.storage import KsegStorage

    return KsegStorage(incoming_dir=str(incoming), store_root=str(tmp_path / "store"))


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[object]:
    import dagster as dg

    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as inst:
        yield inst
