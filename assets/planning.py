"""Which images ``kseg run`` materialises, and in which runs (contiguous partition ranges)."""

import dagster as dg

from .cache import chain_keys, sha256_bytes
from .config import SegmentationConfig
from .incoming import IncomingImage
from .keys import IMAGE_ASSETS
from .provenance import DATA_VERSION_TAG
from .storage import KsegStorage

__all__ = ["batches", "plan"]


def _recorded_versions(
    instance: dg.DagsterInstance, keys: list[str]
) -> dict[str, dict[str, str | None]]:
    storage = instance.event_log_storage
    recorded: dict[str, dict[str, str | None]] = {}
    for asset in IMAGE_ASSETS:
        tags = storage.get_latest_tags_by_partition(
            dg.AssetKey(asset),
            dg.DagsterEventType.ASSET_MATERIALIZATION,
            [DATA_VERSION_TAG],
            asset_partitions=keys,
        )
        recorded[asset] = {key: tags.get(key, {}).get(DATA_VERSION_TAG) for key in keys}
    return recorded


def plan(
    images: list[IncomingImage],
    instance: dg.DagsterInstance,
    storage: KsegStorage,
    config: SegmentationConfig,
) -> tuple[list[str], list[str]]:
    """Which images are new (never materialised) and which are stale.

    Returns
    -------
    new, stale : list of str
        Partition keys.
    """
    settings = config.to_settings()
    store = storage.store()
    keys = [image.key for image in images]
    recorded = _recorded_versions(instance, keys)
    new, stale = [], []
    for image in images:
        if all(recorded[asset][image.key] is None for asset in IMAGE_ASSETS):
            new.append(image.key)
            continue
        try:
            data = image.path.read_bytes()
        except OSError:  # unreadable or gone since the scan: the run reports it per file
            stale.append(image.key)
            continue
        expected = chain_keys(sha256_bytes(data), settings)
        for asset in IMAGE_ASSETS:
            if recorded[asset][image.key] != expected[asset] or not store.intact(
                image.key, asset, expected[asset]
            ):
                stale.append(image.key)
                break
    return new, stale


def batches(order: list[str], wanted: set[str], size: int) -> list[tuple[str, str]]:
    """Contiguous runs of ``wanted`` in partition ``order``, cut into at most ``size`` each."""
    ranges, current = [], []
    for key in order:
        if key in wanted and len(current) < size:
            current.append(key)
            continue
        if current:
            ranges.append((current[0], current[-1]))
        current = [key] if key in wanted else []
    if current:
        ranges.append((current[0], current[-1]))
    return ranges
