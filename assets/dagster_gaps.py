"""The three places where Dagster 1.13 falls short of what kseg needs, worked around.

Everything else in kseg uses Dagster's public API. ``tests/assets/test_dagster_gaps.py``
(and, for the third, ``tests/e2e/test_memory_budget.py``) fails as soon as a gap
closes upstream, so the workaround can be replaced then.

1. **Per-partition check results in a run over several partitions.**
   ``AssetCheckResult`` has no partition: in a run that materialises a range of
   partitions (a backfill batch) it is recorded without one, or refused.
   Upstream: dagster-io/dagster#17005 (partitioned asset checks; the preview
   ``AssetCheckSpec(partitions_def=...)`` exists, the result type does not follow yet).
   Workaround, :func:`check_events`: emit what Dagster itself emits for an
   ``AssetCheckResult`` (its ``to_asset_check_evaluation`` plus an empty ``Output``
   for the check's output), with the partition set on the public
   ``AssetCheckEvaluation``.

2. **A data version on an observation made outside an observation function.**
   ``AssetObservation`` takes no data version, and ``DataVersionsByPartition`` is
   accepted only as the return value of a (deprecated) ``@observable_source_asset``
   function, whose events carry no metadata. The sensor records each image's
   observation when it sees the file (with its path, size and time, which is how the
   next tick knows it need not hash the file again). Upstream:
   dagster-io/dagster#34013 (per-partition data versions), #23405 (partitioned
   ``ObserveResult``).
   Workaround, :func:`observation`: an ``AssetObservation`` with the tag Dagster
   itself writes for a data version (what ``DataVersionsByPartition`` does).

3. **A pool's default limit is ignored in the first run-queue pass that meets the pool.**
   The queued-run daemon reads the configured pools before it gives a new pool the
   instance's ``concurrency.pools.default_limit``, so every run queued in that pass is
   dequeued unlimited: on a new instance the first images dropped at once all start
   together, whatever the memory budget. The same symptom was fixed once upstream
   (dagster-io/dagster#25430); this form is not reported yet.
   Workaround, :func:`apply_pool_default`: give the pool its default limit when kseg
   opens its instance (``kseg run``, ``kseg ui``), through the event log storage method
   the daemon itself calls for it.
"""

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import dagster as dg

__all__ = [
    "DATA_VERSION_TAG",
    "apply_pool_default",
    "check_events",
    "observation",
    "observed_version",
]

#: The tag holding an observation's data version (Dagster's own name for it).
DATA_VERSION_TAG = "dagster/data_version"


def observation(
    asset: str, partition: str, version: str, metadata: Mapping[str, Any]
) -> dg.AssetObservation:
    """An observation of one partition of a source asset, carrying its data version."""
    return dg.AssetObservation(
        asset_key=dg.AssetKey(asset),
        partition=partition,
        metadata=dict(metadata),
        tags={DATA_VERSION_TAG: version},
    )


def observed_version(event: dg.AssetObservation) -> str | None:
    """The data version an observation carries, or None."""
    return (event.tags or {}).get(DATA_VERSION_TAG)


def check_events(
    context: dg.AssetExecutionContext,
    asset: str,
    results: Iterable[tuple[str, str, bool, str, Mapping[str, Any]]],
) -> Iterator[object]:
    """The events recording per-partition check results of ``asset``.

    Parameters
    ----------
    context : AssetExecutionContext
    asset : str
    results : iterable of (partition, check name, passed, description, metadata)

    Yields
    ------
    AssetCheckEvaluation, then Output
        One evaluation per result (blocking as the check is declared), then one empty
        output per selected check of the step, as Dagster does for an ``AssetCheckResult``.
    """
    key = dg.AssetKey(asset)
    selected = {k for k in context.selected_asset_check_keys if k.asset_key == key}
    specs = {spec.key: spec for spec in context.assets_def.check_specs}
    for partition, name, passed, description, metadata in results:
        check_key = dg.AssetCheckKey(key, name)
        if check_key not in selected:
            continue
        yield dg.AssetCheckEvaluation(
            asset_key=key,
            check_name=name,
            passed=passed,
            metadata=dict(metadata),
            description=description,
            partition=partition,
            blocking=specs[check_key].blocking,
        )
    for check_key in sorted(selected, key=lambda k: k.name):
        name = context.assets_def.get_output_name_for_asset_check_key(check_key)
        yield dg.Output(None, output_name=name)


def apply_pool_default(instance: dg.DagsterInstance, pool: str) -> None:
    """Give ``pool`` the instance's default pool limit now, not at the first queue pass.

    A limit set explicitly (UI, ``dagster instance concurrency set``) is kept; without
    a default limit, or on storage without pools, nothing changes.
    """
    default = instance.global_op_concurrency_default_limit
    storage = instance.event_log_storage
    if default is None or not storage.supports_global_concurrency_limits:
        return
    # As the daemon decides it: a pool without a limit yet, or one that follows the
    # default and lags behind it (the storage call would overwrite any other limit).
    current = {limit.name: limit for limit in storage.get_pool_limits()}.get(pool)
    if current is None or (current.from_default and current.limit != default):
        storage.initialize_concurrency_limit_to_default(pool)
