"""The two Dagster gaps kseg works around (assets.dagster_gaps): the workarounds do what
Dagster's own APIs would, and these tests fail as soon as Dagster closes a gap, so the
workaround can be replaced by the public API."""

import inspect
import warnings

import dagster as dg
import pytest

from assets.dagster_gaps import check_events, observation, observed_version

PARTS = dg.DynamicPartitionsDefinition(name="parts")


def test_gap_open_asset_check_results_cannot_name_their_partition() -> None:
    # When this fails, AssetCheckResult can carry a partition (dagster-io/dagster#17005):
    # yield AssetCheckResult(partition=...) from the steps instead of check_events.
    assert "partition" not in inspect.signature(dg.AssetCheckResult).parameters


def test_gap_open_observations_take_no_data_version() -> None:
    # When this fails, AssetObservation takes a data version (dagster-io/dagster#34013):
    # pass it instead of the tag in assets.dagster_gaps.observation.
    assert "data_version" not in inspect.signature(dg.AssetObservation).parameters


def _checked_asset(passes: dict[str, bool]):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        spec = dg.AssetCheckSpec("ok", asset="thing", blocking=True, partitions_def=PARTS)

    @dg.multi_asset(
        specs=[dg.AssetSpec("thing", partitions_def=PARTS)],
        check_specs=[spec],
        partitions_def=PARTS,
        can_subset=True,
    )
    def thing(context: dg.AssetExecutionContext):
        yield dg.MaterializeResult(asset_key="thing")
        results = [(p, "ok", passes[p], f"{p} checked", {"n": 1}) for p in context.partition_keys]
        yield from check_events(context, "thing", results)

    return thing


@pytest.mark.parametrize("failing", [False, True])
def test_check_events_record_one_evaluation_per_partition_of_a_batch(
    instance: dg.DagsterInstance, failing: bool
) -> None:
    instance.add_dynamic_partitions("parts", ["a", "b"])
    asset = _checked_asset({"a": True, "b": not failing})
    job = dg.Definitions(assets=[asset]).resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=instance,
        tags={"dagster/asset_partition_range_start": "a", "dagster/asset_partition_range_end": "b"},
        raise_on_error=False,
    )
    evaluations = {
        e.event_specific_data.partition: e.event_specific_data.passed
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    assert evaluations == {"a": True, "b": not failing}
    assert not [e for e in result.all_events if "did not yield" in (e.message or "")]
    # A failed blocking check fails its step, so the steps below it do not run.
    assert result.success is not failing


def test_an_observation_with_the_tag_is_a_data_version_to_dagster(
    instance: dg.DagsterInstance,
) -> None:
    instance.add_dynamic_partitions("parts", ["a"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)

        @dg.multi_observable_source_asset(
            specs=[dg.AssetSpec("src", partitions_def=PARTS)], partitions_def=PARTS
        )
        def src():
            return None

    condition = dg.AutomationCondition.any_deps_match(dg.AutomationCondition.data_version_changed())

    @dg.asset(deps=["src"], partitions_def=PARTS, automation_condition=condition)
    def child():
        return None

    defs = dg.Definitions(assets=[src, child])
    cursor = None

    def changed_after(version: str) -> bool:
        nonlocal cursor
        event = observation("src", "a", version, {"path": "a.png"})
        assert observed_version(event) == version
        instance.report_runless_asset_event(event)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dg.BetaWarning)
            result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        cursor = result.cursor
        return result.total_requested > 0

    changed_after("v1")  # the first version seen
    assert not changed_after("v1")  # the same version again: nothing changed
    assert changed_after("v2")  # another version: Dagster sees a new data version
