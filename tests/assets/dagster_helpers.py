"""Helpers for the Dagster code-location tests (imported by the test modules)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import dagster as dg
import numpy as np
from PIL import Image

from assets.definitions import build_defs
from assets.incoming import partition_key_for
from assets.names import PARTITIONS_NAME
from assets.partitions import run_tags_for
from assets.storage import KsegStorage
from pipeline.settings import SegmentSettings

#: Small versions of scikit-image's bundled pictures keep the suite fast.
HEIGHT = 48


def sample_rgb(name: str, height: int = HEIGHT) -> np.ndarray:
    """A scikit-image sample picture resized to ``height`` pixels, (H, W, 3) uint8."""
    from skimage import data, transform

    image = getattr(data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    small = transform.resize(image[..., :3], (height, width), anti_aliasing=True)
    return np.clip(np.rint(small * 255), 0, 255).astype(np.uint8)


def write_image(folder: Path, relpath: str, name: str = "astronaut", **save: object) -> str:
    """Save a sample picture at ``folder/relpath``; return its partition key."""
    path = folder / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sample_rgb(name)).save(path, **save)
    return partition_key_for(relpath)


QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def run_job(
    instance: dg.DagsterInstance,
    storage: KsegStorage,
    keys: Sequence[str],
    *,
    job: str = "segment_images",
    settings: SegmentSettings | None = None,
    selection: Sequence[str] | None = None,
    register: bool = True,
    tags: dict[str, str] | None = None,
) -> dg.ExecuteInProcessResult:
    """Run a job of the code location over ``keys`` (one partition, or a range)."""
    if register:
        known = set(instance.get_dynamic_partitions(PARTITIONS_NAME))
        instance.add_dynamic_partitions(PARTITIONS_NAME, [k for k in keys if k not in known])
    kwargs: dict = {"tags": {**(run_tags_for(keys[0], keys[-1]) if keys else {}), **(tags or {})}}
    if selection is not None:
        kwargs["asset_selection"] = [dg.AssetKey(k) for k in selection]
    return (
        build_defs(storage, settings or SegmentSettings())
        .resolve_job_def(job)
        .execute_in_process(run_config=QUIET, instance=instance, raise_on_error=False, **kwargs)
    )


def materializations(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str | None], object]:
    """(asset, partition) -> AssetMaterialization of a run."""
    found = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_MATERIALIZATION":
            m = event.event_specific_data.materialization
            found[m.asset_key.to_user_string(), m.partition] = m
    return found


def check_evaluations(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str | None], object]:
    """(check name, partition) -> AssetCheckEvaluation of a run."""
    found = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            found[evaluation.check_name, evaluation.partition] = evaluation
    return found


def store_mtimes(root: Path) -> dict[str, int]:
    """Modification time (ns) of every file under ``root``."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def requested_partition_keys(
    instance: dg.DagsterInstance, requests: list[dg.RunRequest]
) -> list[str]:
    """Partition keys covered by run ``requests`` (single partitions and ranges)."""
    order = list(instance.get_dynamic_partitions(PARTITIONS_NAME))
    keys = []
    for request in requests:
        if request.partition_key is not None:
            keys.append(request.partition_key)
        else:
            start = order.index(request.tags["dagster/asset_partition_range_start"])
            end = order.index(request.tags["dagster/asset_partition_range_end"])
            keys += order[start : end + 1]
    return keys
