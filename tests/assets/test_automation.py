"""The per-image automation conditions through ``dg.evaluate_automation_conditions``.

Runs are executed the way the sensor, the schedule and the automation sensor request
them: the ``segment_images`` job with an explicit ``asset_selection``.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from dagster_helpers import QUIET, write_image

from assets.automation import (
    AUTOMATION_INTERVAL_ENV,
    AUTOMATION_SENSOR_NAME,
    IMAGE_AUTOMATION_CONDITION,
    LAUNCHED_BY_TAG,
    STATUS_ENV,
    build_automation_sensor,
    default_status,
    kseg_automation_sensor,
)
from assets.cache import STEP_INPUTS
from assets.definitions import build_defs
from assets.image_assets import source_image
from assets.incoming import partition_key_for
from assets.jobs import JOBS
from assets.keys import IMAGE_ASSETS, PARTITIONS_NAME, REPORT, SOURCE
from assets.report import segmentation_report
from assets.steps import image_steps
from assets.storage import KsegStorage

Requested = dict[str, set[str]]
#: The tag every run kseg launches carries (here: as the incoming-folder sensor's runs).
KSEG_RUN = {LAUNCHED_BY_TAG: "incoming_images_sensor"}


def downstream_of(asset: str) -> set[str]:
    """``asset`` and every per-image asset that depends on it, directly or not."""
    found = {asset}
    changed = True
    while changed:
        changed = False
        for name, inputs in STEP_INPUTS.items():
            if name not in found and found & set(inputs):
                found.add(name)
                changed = True
    return found


def defs_with(storage: KsegStorage, bumped: str | None = None) -> dg.Definitions:
    """The code location's definitions; ``bumped``'s code version changed if given."""
    if bumped is None:
        return build_defs(storage)

    def bump(spec: dg.AssetSpec) -> dg.AssetSpec:
        if spec.key == dg.AssetKey(bumped):
            return spec.replace_attributes(code_version=f"{spec.code_version}-bumped")
        return spec

    return dg.Definitions(
        assets=[source_image, image_steps.map_asset_specs(bump), segmentation_report],
        jobs=JOBS,
        resources={"storage": storage},
        executor=dg.in_process_executor,
    )


class Automation:
    """Evaluates the automation conditions tick after tick, keeping the cursor."""

    def __init__(self, instance: dg.DagsterInstance, storage: KsegStorage) -> None:
        self.instance = instance
        self.storage = storage
        self.cursor = None

    def tick(self, defs: dg.Definitions | None = None) -> Requested:
        result = dg.evaluate_automation_conditions(
            defs=defs or defs_with(self.storage),
            instance=self.instance,
            asset_selection=kseg_automation_sensor.asset_selection,  # what the sensor evaluates
            cursor=self.cursor,
        )
        self.cursor = result.cursor
        requested = {}
        for asset in (SOURCE, *IMAGE_ASSETS, REPORT):
            keys = result.get_requested_partitions(dg.AssetKey(asset))
            if keys:
                requested[asset] = set(keys)
        return requested

    def run(
        self,
        key: str,
        assets: list[str] | tuple[str, ...] = IMAGE_ASSETS,
        tags: dict[str, str] | None = KSEG_RUN,
    ) -> bool:
        """Run ``segment_images`` on one partition with an explicit asset selection.

        By default the run is tagged like the runs kseg launches; ``tags=None`` is a run
        launched by hand from the UI.
        """
        job = defs_with(self.storage).resolve_job_def("segment_images")
        result = job.execute_in_process(
            run_config=QUIET,
            instance=self.instance,
            partition_key=key,
            asset_selection=[dg.AssetKey(a) for a in assets],
            tags=tags,
            raise_on_error=False,
        )
        return result.success

    def observe(self, key: str) -> None:
        job = defs_with(self.storage).resolve_job_def("observe_images")
        job.execute_in_process(run_config=QUIET, instance=self.instance, partition_key=key)


@pytest.fixture
def automation(instance: dg.DagsterInstance, storage: KsegStorage) -> Automation:
    return Automation(instance, storage)


@pytest.fixture
def two_images(automation: Automation, incoming: Path) -> tuple[str, str]:
    """Two images registered and segmented the way the sensor does it."""
    a = write_image(incoming, "a.png", "astronaut")
    b = write_image(incoming, "b.png", "coffee")
    automation.instance.add_dynamic_partitions(PARTITIONS_NAME, [a, b])
    assert automation.tick() == {}  # the initial evaluation
    assert automation.run(a) and automation.run(b)
    return a, b


# -- definitions ------------------------------------------------------------------------------
def test_every_per_image_asset_carries_the_condition() -> None:
    graph = build_defs().resolve_asset_graph()
    for asset in IMAGE_ASSETS:
        assert graph.get(dg.AssetKey(asset)).automation_condition == IMAGE_AUTOMATION_CONDITION
    assert graph.get(dg.AssetKey(SOURCE)).automation_condition is None
    assert graph.get(dg.AssetKey(REPORT)).automation_condition is None


def test_the_automation_sensor_runs_by_default_over_the_per_image_assets() -> None:
    defs = build_defs()
    sensor = defs.resolve_sensor_def(AUTOMATION_SENSOR_NAME)
    assert sensor is kseg_automation_sensor
    assert isinstance(sensor, dg.AutomationConditionSensorDefinition)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 30
    graph = defs.resolve_asset_graph()
    selected = sensor.asset_selection.resolve(graph)
    assert selected == {dg.AssetKey(a) for a in IMAGE_ASSETS}


def test_automation_runs_in_process() -> None:
    job = build_defs().resolve_implicit_global_asset_job_def()
    assert job.executor_def.name == "in_process"


def test_interval_and_status_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(AUTOMATION_INTERVAL_ENV, "7")
    monkeypatch.setenv(STATUS_ENV, "Stopped")
    sensor = build_automation_sensor()
    assert sensor.minimum_interval_seconds == 7
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    with pytest.raises(ValueError, match=STATUS_ENV):
        default_status({STATUS_ENV: "paused"})


# -- behaviour --------------------------------------------------------------------------------
@pytest.mark.slow
def test_runs_of_the_sensor_cause_no_second_automatic_run(
    automation: Automation, two_images: tuple[str, str]
) -> None:
    assert automation.tick() == {}
    assert automation.tick() == {}


@pytest.mark.slow
def test_a_kseg_run_seen_between_two_steps_causes_no_second_run(
    automation: Automation, two_images: tuple[str, str]
) -> None:
    # What an evaluation sees when it reads the event log while a run of the sensor is
    # between two steps and the run's status after it ended: one step updated, the next
    # not, nothing in progress. The rest of the image must not be requested again.
    a, _ = two_images
    automation.tick()
    assert automation.run(a, assets=("raw_image",))
    assert automation.tick() == {}
    assert automation.run(a, assets=("raw_image", "pixel_features", "elbow_metrics"))
    assert automation.tick() == {}


@pytest.mark.slow
def test_a_step_rematerialised_from_the_ui_updates_exactly_its_downstream(
    automation: Automation, two_images: tuple[str, str]
) -> None:
    a, _ = two_images
    automation.tick()
    assert automation.run(a, assets=("chosen_k",), tags=None)
    assert automation.tick() == {asset: {a} for asset in downstream_of("chosen_k") - {"chosen_k"}}
    assert automation.tick() == {}


@pytest.mark.slow
def test_a_new_source_version_rematerialises_that_image_only(
    automation: Automation, two_images: tuple[str, str], incoming: Path
) -> None:
    a, b = two_images
    automation.tick()
    automation.observe(b)  # unchanged bytes: the same data version, nothing to do
    assert automation.tick() == {}
    write_image(incoming, "a.png", "chelsea")
    automation.observe(a)
    assert automation.tick() == {asset: {a} for asset in IMAGE_ASSETS}
    assert automation.tick() == {}  # requested once, not again while it is pending
    assert automation.run(a)
    assert automation.tick() == {}


@pytest.mark.slow
@pytest.mark.parametrize("bumped", ["pixel_features", "chosen_k", "segment_stats"])
def test_a_code_version_change_rematerialises_exactly_the_affected_steps(
    automation: Automation, two_images: tuple[str, str], storage: KsegStorage, bumped: str
) -> None:
    automation.tick()
    changed = defs_with(storage, bumped=bumped)
    requested = automation.tick(changed)
    assert requested == {asset: set(two_images) for asset in downstream_of(bumped)}
    assert automation.tick(changed) == {}


@pytest.mark.slow
def test_a_failed_image_is_not_retried_in_a_loop(
    automation: Automation, storage: KsegStorage, incoming: Path
) -> None:
    good = write_image(incoming, "good.png", "astronaut")
    (incoming / "bad.png").write_bytes(b"this is not an image")
    bad = partition_key_for("bad.png")
    automation.instance.add_dynamic_partitions(PARTITIONS_NAME, [good, bad])
    automation.tick()
    assert automation.run(good)
    assert not automation.run(bad)  # the sensor's run of the bad file fails
    for _ in range(3):
        assert automation.tick() == {}
    changed = defs_with(storage, bumped="raw_image")  # a failed image is the schedule's
    requested = automation.tick(changed)
    assert requested == {asset: {good} for asset in IMAGE_ASSETS}
    assert automation.run(good)
    for _ in range(3):
        assert automation.tick(changed) == {}
    (incoming / "bad.png").unlink()  # fixed: the sensor's run succeeds, nothing more to do
    write_image(incoming, "bad.png", "coffee")
    assert automation.run(bad)
    assert automation.tick(changed) == {}
