"""The region assets (region_map, region_boundaries, region_stats): their checks, their
settings (project-wide, per image, in the launchpad and in kseg settings) and their cache."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from dagster_helpers import check_evaluations, materializations, run_job, write_image

from assets.checks import check_labels, check_region_table, check_regions_connected
from assets.cli import main as kseg_main
from assets.definitions import build_defs
from assets.names import (
    IMAGE_ASSETS,
    PARTITIONS_NAME,
    REGION_BOUNDARIES,
    REGION_MAP,
    REGION_STATS,
)  # fmt: skip
from assets.settings import ProjectSettings, change_problems, update_own_settings
from assets.storage import KsegStorage
from pipeline.errors import KsegError, SettingsError
from pipeline.render import decode_png
from pipeline.settings import RegionSettings, SegmentSettings

REGIONS = (REGION_MAP, REGION_BOUNDARIES, REGION_STATS)


# -- the checks, on good and broken maps -----------------------------------------------------
def test_the_region_checks_pass_on_a_good_map_and_fail_on_broken_ones() -> None:
    good = np.array([[0, 0, 1], [2, 2, 1]], dtype=np.uint8)
    assert check_labels(good, 2, 3, 3, name="regions_contiguous", what="regions").passed
    assert check_regions_connected(good, 3).passed
    table = pd.DataFrame({"region": [0, 1, 2], "pixel_count": [2, 2, 2]})
    assert check_region_table(table, good).passed

    split = np.array([[0, 1, 0], [1, 1, 1]], dtype=np.uint8)  # region 0 in two pieces
    verdict = check_regions_connected(split, 2)
    assert not verdict.passed and "3 4-connected pieces for 2 regions" in verdict.description
    gap = check_labels(np.where(good == 1, 5, good), 2, 3, 3, name="regions_contiguous",
                       what="regions")  # fmt: skip
    assert not gap.passed and gap.name == "regions_contiguous"
    assert "regions [0, 2, 5]" in gap.description
    wrong_count = pd.DataFrame({"region": [0, 1, 2], "pixel_count": [3, 1, 2]})
    assert "pixel count unlike" in check_region_table(wrong_count, good).description
    too_few = table.iloc[:2]
    assert "2 rows for 3 regions" in check_region_table(too_few, good).description
    shuffled = table.iloc[[1, 0, 2]]
    assert "not numbered" in check_region_table(shuffled, good).description


# -- materialised, cached, and driven by the image's own settings -----------------------------
def _region_count(result: dg.ExecuteInProcessResult, key: str) -> int:
    return materializations(result)[REGION_MAP, key].metadata["n_regions"].value


def test_an_images_own_region_count_recomputes_only_the_region_steps(
    instance: dg.DagsterInstance, storage: KsegStorage, incoming: Path, tmp_path: Path
) -> None:
    key = write_image(incoming, "photos/coffee.png", "coffee")
    first = run_job(instance, storage, [key])
    assert first.success
    automatic = _region_count(first, key)
    wanted = 2 if automatic != 2 else 3
    update_own_settings(
        storage.store(), ProjectSettings(SegmentSettings()), [key], {"n_regions": wanted},
        updated_by="test",
    )  # fmt: skip
    again = run_job(instance, storage, [key])
    assert again.success
    found = materializations(again)
    cache = {asset: found[asset, key].metadata["cache"].value for asset in IMAGE_ASSETS}
    assert cache == {asset: "miss" if asset in REGIONS else "hit" for asset in IMAGE_ASSETS}
    assert _region_count(again, key) == wanted
    assert found[REGION_MAP, key].metadata["stop_rule"].value == "override"
    assert found[REGION_STATS, key].metadata["dagster/row_count"].value == wanted
    assert all(c.passed for c in check_evaluations(again).values())
    folder = tmp_path / "store" / "images" / key
    assert np.unique(decode_png((folder / "region_map.png").read_bytes())).size == wanted
    assert len(pd.read_parquet(folder / "region_stats.parquet")) == wanted


def test_a_broken_region_map_fails_its_blocking_check_and_stops_the_table(
    instance: dg.DagsterInstance,
    storage: KsegStorage,
    incoming: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import assets.steps.regions as region_module

    real = region_module.find_regions

    def split_one_region(*args, **kwargs):
        found = real(*args, **kwargs)
        labels = found.labels.copy()
        labels[0, 0], labels[-1, -1] = 0, 0  # region 0 now also owns a far corner
        return dataclasses.replace(found, labels=labels)

    monkeypatch.setattr(region_module, "find_regions", split_one_region)
    key = write_image(incoming, "a.png")
    result = run_job(instance, storage, [key])
    assert not result.success
    assert REGION_MAP in {e.step_key for e in result.get_step_failure_events()}
    checks = check_evaluations(result)
    assert not checks["regions_connected", key].passed
    assert (REGION_STATS, key) not in materializations(result)  # blocked downstream


# -- settings: environment, per image, launchpad, kseg settings ----------------------------
def test_project_region_settings_come_from_the_environment_and_bad_ones_are_named() -> None:
    project = ProjectSettings.from_env({"KSEG_MAX_COST": "20", "KSEG_REGIONS": "6"})
    assert project.regions == RegionSettings(max_cost=20.0, n_regions=6)
    assert project.source == "environment"
    assert ProjectSettings.from_env({"KSEG_REGIONS": "auto"}).regions.n_regions is None
    with pytest.raises(SettingsError) as info:
        ProjectSettings.from_env(
            {"KSEG_K_MAX": "1", "KSEG_MAX_COST": "-1", "KSEG_STOP_FALLBACK": "xyz"}
        )
    assert info.value.fields == (
        "KSEG_K_MAX (k_max)",
        "KSEG_MAX_COST (max_cost)",
        "KSEG_STOP_FALLBACK (stop_fallback)",
    )


def test_own_region_settings_override_the_projects_and_change_the_version(tmp_path: Path) -> None:
    storage = KsegStorage(incoming_dir=str(tmp_path), store_root=str(tmp_path / "store"))
    store = storage.store()
    project = ProjectSettings(SegmentSettings(), regions=RegionSettings(max_cost=15.0))
    before = project.for_image(store, "a-png-0123456789")
    update_own_settings(
        store, project, ["a-png-0123456789"], {"stop_strength": 0.3}, updated_by="test"
    )
    after = project.for_image(store, "a-png-0123456789")
    assert after.regions == RegionSettings(max_cost=15.0, min_strength=0.3)
    assert after.settings == before.settings and after.version != before.version
    assert after.values["stop_strength"] == 0.3 and after.values["min_strength"] == 0.45
    with pytest.raises(KsegError, match="'min_regions'"):
        update_own_settings(
            store, project, ["a-png-0123456789"], {"min_regions": 200}, updated_by="test"
        )  # above the project's max_regions of 100: refused, nothing written
    assert project.for_image(store, "a-png-0123456789") == after
    named = {p.field for p in change_problems({"max_cost": 0, "min_share": 1, "n_regions": 0})}
    assert named == {"max_cost", "min_share", "n_regions"}


def _job(storage: KsegStorage) -> dg.JobDefinition:
    return build_defs(storage, SegmentSettings()).resolve_job_def("set_image_settings")


def test_the_launchpad_refuses_bad_region_settings_before_a_run_exists(
    storage: KsegStorage, instance: dg.DagsterInstance
) -> None:
    job = _job(storage)
    with pytest.raises(dg.DagsterInvalidConfigError, match="stop_fallback"):
        dg.validate_run_config(job, {"images": ["a-png-0123456789"], "stop_fallback": "xyz"})
    with pytest.raises(Exception) as info:
        job.execute_in_process(
            run_config={"images": ["a-png-0123456789"], "max_cost": -1, "n_regions": 0},
            instance=instance,
        )
    text = str(info.value) + str(getattr(info.value, "__cause__", ""))
    assert "max_cost: must be" in text and "n_regions: must be" in text
    assert not instance.get_runs()


def test_the_job_and_kseg_settings_set_and_forget_an_images_region_count(
    storage: KsegStorage,
    instance: dg.DagsterInstance,
    incoming: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = write_image(incoming, "a.png")
    instance.add_dynamic_partitions(PARTITIONS_NAME, [key])
    result = _job(storage).execute_in_process(
        run_config={"images": [key], "n_regions": 4, "stop_fallback": "threshold"},
        instance=instance,
    )
    assert result.success
    project = ProjectSettings(SegmentSettings())
    assert project.for_image(storage.store(), key).own == {
        "n_regions": 4,
        "stop_fallback": "threshold",
    }
    monkeypatch.setenv("DAGSTER_HOME", str(instance.root_directory))
    monkeypatch.setenv("KSEG_STORE_ROOT", str(tmp_path / "store"))
    monkeypatch.setenv("KSEG_INCOMING_DIR", str(incoming))
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    assert kseg_main(["settings", key, "--regions", "auto", "--max-cost", "25"]) == 0
    assert project.for_image(storage.store(), key).own == {
        "stop_fallback": "threshold",
        "max_cost": 25.0,
    }
    assert "max_cost=25.0" in out.getvalue()
    document = json.loads((tmp_path / "store" / "settings" / f"{key}.json").read_bytes())
    assert document["updated_by"] == "kseg settings"
    monkeypatch.setattr("sys.stderr", err := io.StringIO())
    assert kseg_main(["settings", key, "--regions", "many"]) == 2
    assert "--regions must be an integer or 'auto'" in err.getvalue()
