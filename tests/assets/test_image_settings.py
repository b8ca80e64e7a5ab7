"""Settings: the project's (definitions or environment), each image's own, the effective ones,
and the set_image_settings job that checks every value before a run exists."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from dagster_helpers import write_image

from assets.definitions import build_defs
from assets.names import PARTITIONS_NAME, SETTINGS
from assets.settings import (
    ProjectSettings,
    parse_own_settings,
    project_settings_from_env,
    settings_version,
    update_own_settings,
)
from assets.storage import KsegStorage, Store
from pipeline.errors import KsegError, SettingsError
from pipeline.settings import SegmentSettings

KEY = "a-png-0123456789"


def test_project_settings_from_the_environment() -> None:
    settings = project_settings_from_env(
        {"KSEG_K_MAX": "9", "KSEG_FEATURES": "rgb", "KSEG_K": "5", "KSEG_MIN_STRENGTH": "0.3"}
    )
    assert (settings.k_max, settings.features, settings.k_override) == (9, "rgb", 5)
    assert settings.min_strength == 0.3
    assert project_settings_from_env({"KSEG_K": "auto"}).k_override is None
    assert project_settings_from_env({}) == SegmentSettings()


def test_every_bad_environment_variable_is_named_at_once() -> None:
    with pytest.raises(SettingsError) as info:
        project_settings_from_env(
            {"KSEG_K_MAX": "twelve", "KSEG_FEATURES": "xyz", "KSEG_SEED": str(2**32)}
        )
    assert info.value.fields == (
        "KSEG_K_MAX (k_max)",
        "KSEG_FEATURES (features)",
        "KSEG_SEED (seed)",
    )
    assert "must be an integer, got 'twelve'" in str(info.value)


def test_an_images_own_settings_override_the_projects_field_by_field(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    project = ProjectSettings(SegmentSettings(k_max=10, seed=3))
    assert project.for_image(store, KEY).settings == SegmentSettings(k_max=10, seed=3)
    update_own_settings(store, project, [KEY], {"k_override": 4, "seed": 9}, updated_by="t")
    image = project.for_image(store, KEY)
    assert image.settings == SegmentSettings(k_max=10, seed=9, k_override=4)
    assert image.own == {"k_override": 4, "seed": 9}
    assert (
        image.version == settings_version(image.settings) != project.for_image(store, "b-1").version
    )
    document = json.loads((tmp_path / "store" / "settings" / f"{KEY}.json").read_bytes())
    assert document["settings"] == {"seed": 9, "k_override": 4}
    assert document["updated_by"] == "t"
    # A project change shows through the fields the image does not set.
    later = ProjectSettings(SegmentSettings(k_max=11, seed=3))
    assert later.for_image(store, KEY).settings.k_max == 11


def test_forgetting_own_settings_goes_back_to_the_projects(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    project = ProjectSettings(SegmentSettings())
    update_own_settings(store, project, [KEY], {"k_override": 4, "seed": 9}, updated_by="t")
    update_own_settings(store, project, [KEY], {}, ["k_override"], updated_by="t")
    assert project.for_image(store, KEY).own == {"seed": 9}
    update_own_settings(store, project, [KEY], {}, ["all"], updated_by="t")
    assert not (tmp_path / "store" / "settings" / f"{KEY}.json").exists()
    assert project.for_image(store, KEY).own == {}


def test_invalid_changes_write_nothing_for_any_image(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    project = ProjectSettings(SegmentSettings(k_max=6))
    with pytest.raises(SettingsError) as info:
        update_own_settings(
            store, project, [KEY], {"k_override": 99, "features": "xyz"}, updated_by="t"
        )
    assert set(info.value.fields) == {"k_override", "features"}
    # Valid alone, invalid with the project's k_max: refused for every image named.
    with pytest.raises(KsegError, match="k_min=8 must not exceed k_max=6"):
        update_own_settings(store, project, [KEY, "b-0123456789"], {"k_min": 8}, updated_by="t")
    assert store.partitions_with_own_settings() == set()


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b"{nope", "not a JSON settings document"),
        (b'{"settings": {}}', "not a kseg image settings document"),
        (b'{"kseg_image_settings": 1, "settings": []}', "'settings' must be an object"),
        (
            b'{"kseg_image_settings": 1, "settings": {"colour": 1}}',
            r"unknown settings \['colour'\]",
        ),
    ],
)
def test_unreadable_own_settings_are_refused_naming_the_file(document: bytes, message: str) -> None:
    with pytest.raises(KsegError, match=message) as info:
        parse_own_settings(document, where="settings/x.json")
    assert str(info.value).startswith("settings/x.json: ")


# -- the set_image_settings job --------------------------------------------------------------
def _job(storage: KsegStorage) -> dg.JobDefinition:
    return build_defs(storage, SegmentSettings()).resolve_job_def("set_image_settings")


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"images": [KEY], "k": 99, "k_max": 1}, ["k: must be empty or", "k_max: must be between"]),
        ({"images": ["../etc"], "seed": -1}, ["'../etc' is not a kseg partition key", "seed"]),
        ({"images": [KEY]}, ["nothing to change"]),
        ({"images": [], "k": 3}, ["images: name at least one"]),
    ],
)
def test_the_job_refuses_bad_settings_before_a_run_exists_naming_every_one(
    storage: KsegStorage, instance: dg.DagsterInstance, config: dict, named: list[str]
) -> None:
    job = _job(storage)
    with pytest.raises(Exception) as info:
        job.execute_in_process(run_config=config, instance=instance)
    text = str(info.value) + str(getattr(info.value, "__cause__", ""))
    for part in named:
        assert part in text
    assert not instance.get_runs()  # nothing was launched, no image was touched


def test_an_enum_choice_is_refused_by_the_launchpad_schema(storage: KsegStorage) -> None:
    job = _job(storage)
    with pytest.raises(dg.DagsterInvalidConfigError, match="features"):
        dg.validate_run_config(job, {"images": [KEY], "features": "xyz"})


def test_the_job_saves_the_settings_and_records_the_images_new_version(
    storage: KsegStorage, instance: dg.DagsterInstance, incoming: Path
) -> None:
    key = write_image(incoming, "a.png")
    instance.add_dynamic_partitions(PARTITIONS_NAME, [key])
    result = _job(storage).execute_in_process(
        run_config={"images": [key], "k": 5, "features": "rgb"},
        instance=instance,
    )
    assert result.success
    own = ProjectSettings(SegmentSettings()).for_image(storage.store(), key)
    assert own.own == {"k_override": 5, "features": "rgb"}
    observation = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(SETTINGS), asset_partitions=[key]), limit=1
    ).records[0]
    assert observation.asset_observation.tags["dagster/data_version"] == own.version


def test_the_job_refuses_an_unknown_image_and_writes_nothing(
    storage: KsegStorage, instance: dg.DagsterInstance
) -> None:
    result = _job(storage).execute_in_process(
        run_config={"images": [KEY], "k": 3}, instance=instance, raise_on_error=False
    )
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert KEY in failure.description and "no such image" in failure.description
    assert storage.store().partitions_with_own_settings() == set()
