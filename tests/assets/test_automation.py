"""Automation: exactly the affected images and steps are re-materialised, once.

Each test plays the daemon: it records what the sensor records, evaluates the
automation conditions with Dagster's own evaluator on a real instance, and executes
the runs they request in process (as a run worker would).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import dagster as dg
import pytest
from daemon_driver import DaemonDriver
from dagster_helpers import QUIET, write_image

from assets import steps as steps_module
from assets.changes import survey
from assets.definitions import build_defs
from assets.names import IMAGE_ASSETS, PARTITIONS_NAME, REPORT
from assets.settings import ProjectSettings, update_own_settings
from pipeline.settings import SegmentSettings

pytestmark = [
    pytest.mark.slow,
    # Dagster's own evaluator calls a beta parameter of AssetSelection.all internally.
    pytest.mark.filterwarnings("ignore:Parameter `include_sources`:dagster.BetaWarning"),
]


class Daemon(DaemonDriver):
    """The sensor's observations, automation's evaluations and the runs, in process."""

    def sense(self) -> None:
        """What incoming_images_sensor records: new partitions and changed observations."""
        found = survey(self.storage, self.instance, self.project)
        self.instance.add_dynamic_partitions(PARTITIONS_NAME, found.new)
        for event in found.events:
            self.instance.report_runless_asset_event(event)

    def run_requested(self) -> list[dg.ExecuteInProcessResult]:
        """Execute the last tick's requests, one run per partition, as run workers would."""
        job = self.defs.resolve_implicit_global_asset_job_def()
        by_partition: dict[str | None, list[str]] = {}
        for name, partitions in self.requested.items():
            for partition in partitions:
                by_partition.setdefault(partition, []).append(name)
        results = []
        for partition, names in sorted(by_partition.items(), key=lambda item: item[0] is None):
            tags = {"dagster/partition": partition} if partition else {}
            results.append(
                job.execute_in_process(
                    run_config=QUIET,
                    instance=self.instance,
                    asset_selection=[dg.AssetKey(name) for name in names],
                    tags=tags,
                    raise_on_error=False,
                )
            )
        return results

    def settle(self, ticks: int = 4) -> None:
        """Evaluate and run until nothing more is requested."""
        for _ in range(ticks):
            if not self.evaluate():
                return
            self.run_requested()
        raise AssertionError("automation kept requesting runs")


@pytest.fixture
def daemon(instance, storage) -> Daemon:
    running = Daemon(instance, storage)
    assert running.evaluate() == {}  # automation was already on before any image came
    return running


def _two_images(incoming: Path) -> tuple[str, str]:
    return write_image(incoming, "a.png", "astronaut"), write_image(incoming, "c.png", "coffee")


def test_new_images_are_segmented_once_then_the_report(daemon, incoming):
    a, c = _two_images(incoming)
    daemon.sense()
    requested = daemon.evaluate()
    assert {name: requested[name] for name in IMAGE_ASSETS} == {n: {a, c} for n in IMAGE_ASSETS}
    assert REPORT not in requested  # not before the images are materialised
    assert all(r.success for r in daemon.run_requested())
    assert daemon.evaluate() == {REPORT: {None}}
    daemon.run_requested()
    assert daemon.evaluate() == {}
    daemon.sense()  # nothing changed: nothing recorded, nothing requested
    assert daemon.evaluate() == {}


def test_a_replaced_file_resegments_that_image_only(daemon, incoming):
    a, _c = _two_images(incoming)
    daemon.sense()
    daemon.settle()
    write_image(incoming, "a.png", "chelsea")
    daemon.sense()
    requested = daemon.evaluate()
    assert {name: requested.get(name) for name in IMAGE_ASSETS} == {n: {a} for n in IMAGE_ASSETS}


def test_a_touched_file_requests_nothing(daemon, incoming):
    _a, _ = _two_images(incoming)
    daemon.sense()
    daemon.settle()
    path = incoming / "a.png"
    path.write_bytes(path.read_bytes())  # same bytes, new time
    daemon.sense()
    assert daemon.evaluate() == {}


def test_an_images_own_settings_resegment_it_from_the_first_step_that_reads_them(
    daemon, incoming, storage
):
    a, _c = _two_images(incoming)
    daemon.sense()
    daemon.settle()
    update_own_settings(storage.store(), daemon.project, [a], {"k_override": 5}, updated_by="test")
    daemon.sense()
    requested = daemon.evaluate()
    assert "raw_image" not in requested  # it reads no setting
    assert {name: requested[name] for name in IMAGE_ASSETS[1:]} == {
        name: {a} for name in IMAGE_ASSETS[1:]
    }
    daemon.run_requested()
    outcome = storage.store().manifest(a, "chosen_k")
    assert outcome.info["chosen_k"] == 5
    # Nothing reverts it: the next ticks (and any number of them) request nothing.
    daemon.settle()
    daemon.sense()
    assert daemon.evaluate() == {}
    assert storage.store().manifest(a, "chosen_k").info["chosen_k"] == 5


def test_a_project_settings_change_marks_exactly_the_affected_images(daemon, incoming, storage):
    a, c = _two_images(incoming)
    update_own_settings(storage.store(), daemon.project, [a], {"k_override": 4}, updated_by="t")
    daemon.sense()
    daemon.settle()
    # The project's fixed K changes: the image with its own K keeps it and is untouched.
    daemon.project = ProjectSettings(SegmentSettings(k_override=6))
    daemon.defs = build_defs(daemon.storage, daemon.project)
    daemon.sense()
    requested = daemon.evaluate()
    assert {name: requested.get(name) for name in IMAGE_ASSETS[1:]} == {
        name: {c} for name in IMAGE_ASSETS[1:]
    }


def test_a_code_version_change_rematerialises_that_step_and_what_follows(
    daemon, incoming, monkeypatch
):
    a, c = _two_images(incoming)
    daemon.sense()
    daemon.settle()
    changed = dataclasses.replace(steps_module.STEPS["chosen_k"], code_version="99")
    monkeypatch.setitem(steps_module.STEPS, "chosen_k", changed)
    daemon.defs = build_defs(daemon.storage, daemon.project)
    requested = daemon.evaluate()
    downstream = IMAGE_ASSETS[IMAGE_ASSETS.index("chosen_k") :]  # the regions too
    assert {name: requested.get(name) for name in IMAGE_ASSETS} == {
        name: ({a, c} if name in downstream else None) for name in IMAGE_ASSETS
    }
    daemon.run_requested()
    daemon.settle()  # then the report, once, and nothing more


def test_a_failed_image_is_not_retried_in_a_loop(daemon, incoming):
    (incoming / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    daemon.sense()
    assert daemon.evaluate()
    results = daemon.run_requested()
    assert not any(r.success for r in results)
    for _ in range(3):
        daemon.sense()
        assert IMAGE_ASSETS[0] not in daemon.evaluate()


def test_images_without_outputs_are_taken_when_automation_starts(instance, storage, incoming):
    a, c = _two_images(incoming)
    late = Daemon(instance, storage)
    late.sense()  # the sensor saw them before automation ever evaluated
    requested = late.evaluate()
    assert {name: requested[name] for name in IMAGE_ASSETS} == {n: {a, c} for n in IMAGE_ASSETS}
