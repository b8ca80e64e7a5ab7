"""``image_steps``: the per-image assets, computed image by image, batch by batch.

The seven per-image assets (``raw_image`` ... ``segment_stats``) are the specs of
one multi-asset, so each has its own key, group, description, kinds, code
version and lineage edge in the UI, while a run covering many images (a backfill
batch, ``kseg run``) loops over its partitions in one step instead of paying
Dagster's per-step cost seven times per image. Each image's steps run in order;
every step is cached (see :mod:`assets.cache`).

Events: for every asset and partition the step logs its own
``AssetMaterialization`` carrying that partition's data version (the cache key)
and provenance (see :mod:`assets.provenance` for why), then the partition's
check evaluations. A bad image fails only its own partition: the other images of
the batch are materialised, and the step then fails with a
:class:`dagster.Failure` naming every failed file and the reason. Each image is
processed under its store lock (:meth:`assets.store.Store.lock`), so two runs on
the same image never interleave their writes.
"""

import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from pipeline.errors import KsegError

from .automation import IMAGE_AUTOMATION_CONDITION
from .cache import STEP_INPUTS
from .checks import image_check_specs
from .config import SegmentationConfig, settings_or_failure
from .image_assets import pixel_features, raw_image, read_source
from .incoming import is_valid_partition_key
from .keys import (
    BATCH_SIZE,
    CHOSEN,
    CODE_VERSIONS,
    ELBOW,
    FEATURES,
    GROUP_IMAGES,
    GROUP_SEGMENTATION,
    IMAGE_ASSETS,
    LABELS,
    RAW,
    SEGMENTED,
    SOURCE,
    STATS,
)
from .metadata import DECLARED_SCHEMAS
from .partitions import IMAGES
from .provenance import RecordCache, materialization, observation
from .segmentation_assets import SEGMENTATION_STEPS
from .storage import KsegStorage
from .store import Store
from .work import ImageWork, StepOutcome

__all__ = ["IMAGE_SPECS", "image_steps"]

_DESCRIPTIONS = {
    RAW: "The image decoded to upright 8-bit RGB, transparency flattened, stored as a "
    "lossless PNG; its metadata keeps the file's original format, mode, size and orientation.",
    FEATURES: "The clustering input: one row per pixel with its position, RGB values and "
    "colour-space channels (Parquet).",
    ELBOW: "The K sweep: K-means for every K in the range, one row per K with WCSS "
    "(within-cluster sum of squares), explained variance, other quality indices, time, "
    "iterations and cluster centres (Parquet).",
    CHOSEN: "The number of segments K, chosen at the elbow of the WCSS curve (or by the "
    "fallback rule or the override), with knee strength and reason (JSON); its metadata "
    "shows the elbow plot.",
    SEGMENTED: "The segmented picture: every pixel painted with its segment's mean colour "
    "(PNG); its metadata shows a preview (original | segmented | boundaries).",
    LABELS: "The segment number of each pixel, 0..K-1, darkest segment first (8- or 16-bit "
    "greyscale PNG).",
    STATS: "One row per segment: pixel count and share, mean colour, centroid, bounding box "
    "and number of connected pieces (Parquet).",
}
_KINDS = {
    RAW: {"python", "png"},
    FEATURES: {"python", "parquet"},
    ELBOW: {"scikitlearn", "parquet"},
    CHOSEN: {"python", "json"},
    SEGMENTED: {"python", "png"},
    LABELS: {"python", "png"},
    STATS: {"python", "parquet"},
}
_GROUPS = {RAW: GROUP_IMAGES, FEATURES: GROUP_IMAGES}
_STEPS = ((RAW, raw_image), (FEATURES, pixel_features), *SEGMENTATION_STEPS)


def _deps(asset: str) -> list[str]:
    return [SOURCE if name == "source" else name for name in STEP_INPUTS[asset]]


#: One spec per per-image asset.
IMAGE_SPECS = [
    dg.AssetSpec(
        asset,
        deps=_deps(asset),
        description=_DESCRIPTIONS[asset],
        group_name=_GROUPS.get(asset, GROUP_SEGMENTATION),
        kinds=_KINDS[asset],
        code_version=CODE_VERSIONS[asset],
        partitions_def=IMAGES,
        skippable=True,
        automation_condition=IMAGE_AUTOMATION_CONDITION,  # see assets.automation
        metadata={"dagster/column_schema": DECLARED_SCHEMAS[asset]}
        if asset in DECLARED_SCHEMAS
        else None,
    )
    for asset in IMAGE_ASSETS
]


def _events(
    context: dg.AssetExecutionContext, records: RecordCache, work: ImageWork, outcome: StepOutcome
) -> Iterator[object]:
    key = dg.AssetKey(outcome.asset)
    inputs = [(dg.AssetKey(name), name == SOURCE) for name in _deps(outcome.asset)]
    yield materialization(
        records,
        asset_key=key,
        partition=work.partition,
        data_version=outcome.cache_key,
        code_version=CODE_VERSIONS[outcome.asset],
        inputs=inputs,
        metadata=outcome.metadata,
    )
    records.logged(key, work.partition, outcome.cache_key)
    selected = context.selected_asset_check_keys
    for check in outcome.checks:
        if dg.AssetCheckKey(key, check.name) not in selected:
            continue
        yield dg.AssetCheckEvaluation(
            asset_key=key,
            check_name=check.name,
            passed=check.passed,
            metadata=check.metadata,
            description=check.description,
            partition=work.partition,
        )


def _observe_source(records: RecordCache, work: ImageWork) -> Iterator[object]:
    # The step hashes the file anyway: record the version it read unless the latest
    # observation already says so, so raw_image's provenance points at this version.
    key = dg.AssetKey(SOURCE)
    latest = records.get(key, work.partition, is_source=True)
    if latest is None or latest[1] != work.source_sha256:
        assert work.source is not None and work.source_bytes is not None
        yield observation(
            asset_key=key,
            partition=work.partition,
            data_version=work.source_sha256,
            metadata={"path": work.source.relpath, "bytes": len(work.source_bytes)},
        )
        records.logged(key, work.partition, work.source_sha256)


def _process(
    context: dg.AssetExecutionContext,
    records: RecordCache,
    work: ImageWork,
    selected: list[str],
    root: Path,
) -> Iterator[object]:
    if RAW in selected:
        read_source(work, root)
        yield from _observe_source(records, work)
    for asset, step in _STEPS:
        if asset in selected:
            started = time.perf_counter()
            outcome = step(work)
            # Wall time of the whole step for this image: cache lookup, compute and save
            # (misses), then metadata and checks.
            outcome.seconds = time.perf_counter() - started
            outcome.metadata["seconds"] = round(outcome.seconds, 4)
            yield from _events(context, records, work, outcome)


def _failure(failures: list[tuple[str, str]], total: int) -> dg.Failure:
    if len(failures) == 1:
        description = failures[0][1]
    else:
        listed = "; ".join(message for _, message in failures)
        description = f"{len(failures)} of {total} images failed: {listed}"
    return dg.Failure(
        description=description,
        metadata={
            "failed_partitions": dg.MetadataValue.json(
                [{"partition": key, "error": message} for key, message in failures]
            ),
            "failed": len(failures),
            "total": total,
        },
        allow_retries=False,
    )


@dg.multi_asset(
    name="image_steps",
    specs=IMAGE_SPECS,
    check_specs=image_check_specs(),
    partitions_def=IMAGES,
    can_subset=True,
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=BATCH_SIZE),
    description="The per-image steps, image by image: decode, features, K sweep, chosen K, "
    "segmentation.",
)
def image_steps(
    context: dg.AssetExecutionContext, config: SegmentationConfig, storage: KsegStorage
):
    """Compute (or reuse from the cache) the selected per-image assets of every partition."""
    settings = settings_or_failure(config)  # before anything is read: names a bad field
    selected = [a for a in IMAGE_ASSETS if dg.AssetKey(a) in context.selected_asset_keys]
    store: Store = storage.store()
    partitions = list(context.partition_keys)
    sources = storage.scan().by_key() if RAW in selected else {}
    records = RecordCache(context.instance)
    for name in {dep for asset in selected for dep in _deps(asset)}:  # in bulk, not per image
        records.prefetch(dg.AssetKey(name), partitions, is_source=name == SOURCE)
    failures: list[tuple[str, str]] = []
    started = time.perf_counter()
    for partition in partitions:
        try:
            if not is_valid_partition_key(partition):
                raise KsegError(f"refusing partition key {partition!r}: not a kseg key")
            work = ImageWork(store, partition, settings, sources.get(partition))
            with store.lock(partition):
                yield from _process(context, records, work, selected, storage.incoming())
        except KsegError as exc:
            failures.append((partition, str(exc)))
            context.log.error(f"{partition}: {exc}")
        except Exception as exc:  # a bug or an environment failure: report it per image
            failures.append((partition, f"{partition}: {type(exc).__name__}: {exc}"))
            context.log.error(f"{partition}: unexpected error\n{traceback.format_exc()}")
    context.log.info(
        f"{len(partitions) - len(failures)} of {len(partitions)} image(s) done in "
        f"{time.perf_counter() - started:.2f} s"
    )
    if failures:
        raise _failure(failures, len(partitions))
