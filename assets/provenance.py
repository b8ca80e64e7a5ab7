"""Per-partition materialisation events that carry their own data version and provenance.

Why the per-image steps log their events themselves: Dagster 1.13 gives one
``MaterializeResult``/``Output`` per asset per step, and when a step covers
several partitions (a backfill batch) it copies that one data version to every
partition's event and records the inputs' versions of the whole range
(dagster-io/dagster#34013, #18649), and a failure of one partition fails them
all (#17836). The per-image steps therefore emit one ``AssetMaterialization`` per
asset and partition with the tags Dagster writes for a versioned materialisation:

* ``dagster/data_version``: the step's cache key (marked user-provided),
* ``dagster/code_version``: the asset's code version,
* ``dagster/input_data_version/<dep>`` and ``dagster/input_event_pointer/<dep>``:
  the data version and event id of the same partition of each dependency,
  read back from the instance just before the event is logged.

Dagster's staleness ("Unsynced") reads exactly these tags, so it follows content
per image, whether one image or fifty are materialised in a run. The tag names
come from Dagster's own module (pinned release) rather than being retyped here.
"""

from collections.abc import Iterable, Mapping
from typing import Any

import dagster as dg
from dagster._core.definitions.data_version import (
    CODE_VERSION_TAG,
    DATA_VERSION_IS_USER_PROVIDED_TAG,
    DATA_VERSION_TAG,
    DEFAULT_DATA_VERSION,
    extract_data_version_from_entry,
    get_input_data_version_tag,
    get_input_event_pointer_tag,
)

__all__ = [
    "DATA_VERSION_TAG",
    "RecordCache",
    "latest_record",
    "latest_version",
    "materialization",
    "observation",
]

_NULL_POINTER = "NULL"  # what Dagster writes when an input has no event


def latest_record(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str, *, is_source: bool
) -> dg.EventLogRecord | None:
    """The latest materialisation (or, for a source, observation) of one partition."""
    return instance.get_latest_data_version_record(key, is_source, partition)


def latest_version(record: dg.EventLogRecord | None) -> str | None:
    """The data version recorded on an event, if any."""
    if record is None:
        return None
    version = extract_data_version_from_entry(record.event_log_entry)
    return None if version is None else version.value


def _event_type(is_source: bool) -> dg.DagsterEventType:
    if is_source:
        return dg.DagsterEventType.ASSET_OBSERVATION
    return dg.DagsterEventType.ASSET_MATERIALIZATION


class RecordCache:
    """The latest event (id and data version) of each input partition of a batch.

    :meth:`prefetch` reads them for many partitions in two queries per asset. After
    the step logs a new event for an (asset, partition) it calls :meth:`logged`:
    if the new event has the version already known, the known event id is kept (a
    pointer to an earlier event with the same version gives the same staleness
    answer: Dagster compares the version before and after the pointer), otherwise
    the new event's id is read back (one small query).
    """

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        self._latest: dict[tuple[dg.AssetKey, str], tuple[int, str | None] | None] = {}
        self._logged: dict[tuple[dg.AssetKey, str], str] = {}

    def prefetch(self, key: dg.AssetKey, partitions: list[str], *, is_source: bool) -> None:
        """Read the latest event of ``key`` for every partition of ``partitions``."""
        kind = _event_type(is_source)
        storage = self.instance.event_log_storage
        ids = storage.get_latest_storage_id_by_partition(key, kind, set(partitions))
        tags = storage.get_latest_tags_by_partition(
            key, kind, [DATA_VERSION_TAG], asset_partitions=list(partitions)
        )
        for partition in partitions:
            if partition in ids:
                version = tags.get(partition, {}).get(DATA_VERSION_TAG)
                self._latest[key, partition] = (ids[partition], version)
            else:
                self._latest[key, partition] = None

    def get(
        self, key: dg.AssetKey, partition: str, *, is_source: bool
    ) -> tuple[int, str | None] | None:
        """(event id, data version) of the latest event of one partition, or None."""
        if (key, partition) in self._logged:
            version = self._logged.pop((key, partition))
            ids = self.instance.event_log_storage.get_latest_storage_id_by_partition(
                key, _event_type(is_source), {partition}
            )
            self._latest[key, partition] = (ids[partition], version) if partition in ids else None
        if (key, partition) not in self._latest:
            record = latest_record(self.instance, key, partition, is_source=is_source)
            self._latest[key, partition] = (
                None if record is None else (record.storage_id, latest_version(record))
            )
        return self._latest[key, partition]

    def logged(self, key: dg.AssetKey, partition: str, version: str) -> None:
        """Note that an event with ``version`` was just logged for one partition."""
        known = self._latest.get((key, partition))
        if known is None or known[1] != version:
            # Its id is read back only if a later event needs it as an input.
            self._latest.pop((key, partition), None)
            self._logged[key, partition] = version


def _input_tags(
    records: RecordCache, inputs: Iterable[tuple[dg.AssetKey, bool]], partition: str
) -> dict[str, str]:
    tags = {}
    for key, is_source in inputs:
        latest = records.get(key, partition, is_source=is_source)
        event_id, version = latest if latest is not None else (None, None)
        tags[get_input_data_version_tag(key)] = version or DEFAULT_DATA_VERSION.value
        tags[get_input_event_pointer_tag(key)] = (
            str(event_id) if event_id is not None else _NULL_POINTER
        )
    return tags


def materialization(
    records: RecordCache,
    *,
    asset_key: dg.AssetKey,
    partition: str,
    data_version: str,
    code_version: str,
    inputs: Iterable[tuple[dg.AssetKey, bool]],
    metadata: Mapping[str, Any],
) -> dg.AssetMaterialization:
    """A partition's materialisation event with its data version and provenance tags.

    Parameters
    ----------
    records : RecordCache
        Where the inputs' latest events are read.
    asset_key : AssetKey
    partition : str
    data_version : str
        The step's cache key.
    code_version : str
    inputs : iterable of (AssetKey, bool)
        Each dependency and whether it is a source (observed, not materialised).
    metadata : mapping

    Returns
    -------
    AssetMaterialization
    """
    tags = {
        CODE_VERSION_TAG: code_version,
        **_input_tags(records, inputs, partition),
        DATA_VERSION_TAG: data_version,
        DATA_VERSION_IS_USER_PROVIDED_TAG: "true",
    }
    return dg.AssetMaterialization(
        asset_key=asset_key, partition=partition, metadata=dict(metadata), tags=tags
    )


def observation(
    *, asset_key: dg.AssetKey, partition: str, data_version: str, metadata: Mapping[str, Any]
) -> dg.AssetObservation:
    """A source partition's observation event carrying its data version."""
    return dg.AssetObservation(
        asset_key=asset_key,
        partition=partition,
        metadata=dict(metadata),
        tags={DATA_VERSION_TAG: data_version, DATA_VERSION_IS_USER_PROVIDED_TAG: "true"},
    )
