"""The latest observation of each image's sources, as Dagster recorded them.

Dagster's event log is kseg's memory of the incoming files: every time a file is
hashed, an observation of its ``source_image`` partition records the SHA-256 (its
data version) with the path, size and modification time it had. A later look that
finds the same size and time reuses that SHA-256 instead of reading the file again.
The same holds for ``image_settings`` (the effective settings' version).

:class:`LatestObservations` reads those records through Dagster's public
``fetch_observations``, all of them once and then only the newer ones, and keeps the
latest per partition. One cache per instance lives as long as the process (the code
server that evaluates the sensor, a run worker, ``kseg run``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import dagster as dg

from .dagster_gaps import observed_version
from .names import SOURCES

__all__ = ["LatestObservations", "Observed", "latest_observations"]

_PAGE = 5000


@dataclass(frozen=True)
class Observed:
    """The latest observation of one partition of a source.

    Attributes
    ----------
    version : str
        Its data version (SHA-256 of the file, or the settings' version).
    metadata : dict
        Its metadata, as plain values (``path``, ``bytes``, ``stamp``, ...).
    storage_id : int
        Its position in the event log.
    """

    version: str
    metadata: dict[str, Any]
    storage_id: int


def _plain(metadata: dict[str, Any]) -> dict[str, Any]:
    return {name: getattr(value, "value", value) for name, value in metadata.items()}


class LatestObservations:
    """The latest observation per partition of ``source_image`` and ``image_settings``.

    Parameters
    ----------
    instance : DagsterInstance
    """

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        self._latest: dict[str, dict[str, Observed]] = {asset: {} for asset in SOURCES}
        self._cursor: dict[str, int] = {asset: 0 for asset in SOURCES}
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Read the observations recorded since the last refresh."""
        with self._lock:
            for asset in SOURCES:
                self._read_newer(asset)

    def _read_newer(self, asset: str) -> None:
        latest = self._latest[asset]
        while True:
            records = self.instance.fetch_observations(
                dg.AssetRecordsFilter(
                    asset_key=dg.AssetKey(asset), after_storage_id=self._cursor[asset] or None
                ),
                limit=_PAGE,
                ascending=True,
            ).records
            for record in records:
                event = record.asset_observation
                version = observed_version(event) if event is not None else None
                if record.partition_key is not None and version is not None:
                    latest[record.partition_key] = Observed(
                        version, _plain(dict(event.metadata)), record.storage_id
                    )
                self._cursor[asset] = max(self._cursor[asset], record.storage_id)
            if len(records) < _PAGE:
                return

    def get(self, asset: str, partition: str) -> Observed | None:
        """The latest observation of one partition (as of the last :meth:`refresh`)."""
        return self._latest[asset].get(partition)

    def noted(self, asset: str, partition: str, version: str, metadata: dict[str, Any]) -> None:
        """Remember an observation this process just recorded (before reading it back)."""
        with self._lock:
            previous = self._latest[asset].get(partition)
            storage_id = previous.storage_id if previous else 0
            self._latest[asset][partition] = Observed(version, dict(metadata), storage_id)

    def forget(self, partitions: Iterable[str]) -> None:
        """Drop deleted partitions."""
        with self._lock:
            for asset in SOURCES:
                for partition in partitions:
                    self._latest[asset].pop(partition, None)


_CACHES: dict[str, LatestObservations] = {}
_CACHES_LOCK = threading.Lock()


def latest_observations(instance: dg.DagsterInstance) -> LatestObservations:
    """The process's cache for ``instance``, refreshed."""
    try:
        identity = repr(instance.get_ref())
    except Exception:  # an ephemeral instance has no reference; it lives in this process only
        identity = f"ephemeral:{id(instance)}"
    with _CACHES_LOCK:
        cache = _CACHES.get(identity)
        if cache is None:
            cache = _CACHES[identity] = LatestObservations(instance)
    cache.instance = instance
    cache.refresh()
    return cache
