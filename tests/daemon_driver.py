"""What the Dagster daemon does for kseg, one step at a time and in process, for tests.

:class:`DaemonDriver` ticks ``incoming_images_sensor`` through ``evaluate_tick`` (the
daemon's entry point), applies its partition requests and asset events and commits its
cursor, and evaluates the automation conditions with Dagster's own evaluator. The
sensor tests, the automation tests and the robustness tests all drive the code location
this way.
"""

from __future__ import annotations

import dagster as dg

from assets.definitions import build_defs
from assets.names import IMAGE_ASSETS, PARTITIONS_NAME, REPORT
from assets.sensors import SENSOR_NAME, SensorSettings, TickReport, evaluate_incoming
from assets.settings import ProjectSettings
from assets.storage import KsegStorage
from pipeline.settings import SegmentSettings


def apply_sensor_data(instance: dg.DagsterInstance, data: dg.SensorExecutionData) -> None:
    """Record a tick's partition requests and asset events, as the daemon does."""
    for request in data.dynamic_partitions_requests or []:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(
                request.partitions_def_name, list(request.partition_keys)
            )
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)
    for event in data.asset_events or []:
        instance.report_runless_asset_event(event)


class DaemonDriver:
    """Ticks the sensor and evaluates automation like the daemon, in process."""

    def __init__(
        self,
        instance: dg.DagsterInstance,
        storage: KsegStorage,
        settings: SensorSettings | None = None,
        project: ProjectSettings | None = None,
    ) -> None:
        self.instance = instance
        self.storage = storage
        self.project = project or ProjectSettings(SegmentSettings())
        self.defs = build_defs(storage, self.project)
        self.cursor: str | None = None
        self.automation_cursor = None
        self.reports: list[TickReport] = []
        self.requested: dict[str, set[str | None]] = {}
        reports, project_settings = self.reports, self.project
        tick_settings = settings or SensorSettings()

        # The code location's sensor body with the test's settings (the definition's
        # settings come from the environment).
        @dg.sensor(name=SENSOR_NAME, asset_selection=[dg.AssetKey(REPORT)])
        def probe(context: dg.SensorEvaluationContext, storage: KsegStorage) -> dg.SensorResult:
            result, report = evaluate_incoming(context, storage, project_settings, tick_settings)
            reports.append(report)
            return result

        self.sensor = probe

    def tick(self) -> tuple[dg.SensorExecutionData, TickReport]:
        """One sensor tick: evaluate, apply its requests and events, commit its cursor."""
        # A context made from an instance ref opens its own instance: close it with the
        # tick, or it lingers and breaks later tests.
        with dg.build_sensor_context(
            instance=self.instance,
            instance_ref=self.instance.get_ref(),
            cursor=self.cursor,
            definitions=self.defs,
            resources={"storage": self.storage},
        ) as context:
            data = self.sensor.evaluate_tick(context)
        apply_sensor_data(self.instance, data)
        self.cursor = data.cursor
        return data, self.reports[-1]

    def evaluate(self) -> dict[str, set[str | None]]:
        """One automation tick: asset -> partitions requested."""
        result = dg.evaluate_automation_conditions(
            defs=self.defs, instance=self.instance, cursor=self.automation_cursor
        )
        self.automation_cursor = result.cursor
        self.requested = {
            name: set(partitions)
            for name in (*IMAGE_ASSETS, REPORT)
            if (partitions := result.get_requested_partitions(dg.AssetKey(name)))
        }
        return self.requested

    def partitions(self) -> list[str]:
        """The registered image partitions, in order."""
        return list(self.instance.get_dynamic_partitions(PARTITIONS_NAME))
