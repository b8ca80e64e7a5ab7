"""The two places where Dagster 1.13 has no public API for what kseg needs, worked around.

Everything else in kseg uses Dagster's public API. ``tests/assets/test_dagster_gaps.py``
fails as soon as either gap closes upstream, so the workaround can be replaced then.

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
"""

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import dagster as dg

__all__ = ["DATA_VERSION_TAG", "check_events", "observation", "observed_version"]

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
