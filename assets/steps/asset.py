"""The Dagster wiring of every per-image step: :func:`step_asset`.

Each step is its own asset and its own op, so the run view times each step, a failure
names the step, and "re-execute from failure" re-runs only what failed. A run may
cover many images (a backfill batch): each step then loops over the run's partitions,
image by image, under the image's store lock, so Dagster's per-run cost is paid once
per batch. Per image the step records its own metadata and check results.

A batch is all or nothing per step, as Dagster's batches are: if an image fails, the
step finishes the others (their outputs are stored, so a rerun finds them as cache
hits) and then fails, naming every failed image and why; the steps downstream are
skipped. :func:`assets.sensors.build_failed_batch_sensor` then requests one run per
image of that batch, so the good images complete and the bad one fails on its own.
"""

import time
import warnings
from typing import Any

import dagster as dg

from pipeline.errors import KsegError

from ..automation import IMAGE_CONDITION
from ..dagster_gaps import check_events, observation
from ..incoming import is_valid_partition_key, look, partition_key_for, read_source
from ..metadata import column_schema, file_link
from ..names import BATCH_SIZE, IMAGE_POOL, SETTINGS, SOURCE
from ..observations import LatestObservations, latest_observations
from ..partitions import IMAGES
from ..settings import ProjectSettings
from ..storage import KsegStorage, Store
from .base import Inputs, Outcome, SourceFile, Step, run_image

__all__ = ["step_asset"]


def _deps(step: Step) -> list[str]:
    return [*step.reads, SETTINGS] if step.settings else list(step.reads)


def _check_specs(step: Step) -> list[dg.AssetCheckSpec]:
    with warnings.catch_warnings():
        # Partitioned checks are a preview API in Dagster 1.13 (pinned): the results
        # are per image, which is what they are for (see assets.dagster_gaps).
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return [
            dg.AssetCheckSpec(
                check.name,
                asset=step.asset,
                description=check.description,
                blocking=check.blocking,
                partitions_def=IMAGES,
            )
            for check in step.checks
        ]


class _Sources:
    """Where each partition's image file is: the latest observation says, else a scan."""

    def __init__(self, storage: KsegStorage, observed: LatestObservations) -> None:
        self.storage = storage
        self.observed = observed
        self._scanned: dict[str, str] | None = None

    def relpath(self, partition: str) -> str | None:
        seen = self.observed.get(SOURCE, partition)
        path = seen.metadata.get("path") if seen else None
        root = self.storage.incoming()
        if isinstance(path, str) and partition_key_for(path) == partition and look(root / path):
            return path
        if self._scanned is None:
            self._scanned = {image.key: image.relpath for image in self.storage.scan().images}
        return self._scanned.get(partition)

    def file(self, partition: str) -> SourceFile | None:
        relpath = self.relpath(partition)
        if relpath is None:
            return None
        root = self.storage.incoming()
        name = str(root / relpath)
        stat: dict[str, Any] = {}

        def read() -> bytes:
            try:
                data, seen = read_source(root, relpath, max_bytes=self.storage.max_file_bytes)
            except ValueError as exc:
                raise KsegError(f"{name}: {exc}") from exc
            except OSError as exc:
                raise KsegError(f"{name}: cannot read file ({exc.strerror or exc})") from exc
            stat.update(path=relpath, bytes=seen.size, stamp=seen.stamp)
            return data

        return SourceFile(relpath, name, read, stat)


def _observe_changes(
    step: Step,
    outcome: Outcome,
    source: SourceFile | None,
    version: str,
    own: dict,
    observed: LatestObservations,
) -> list[dg.AssetObservation]:
    """Observations of what this step read, where it differs from the latest recorded."""
    events = []
    partition = outcome.partition
    if outcome.source_sha256 is not None and source is not None:
        seen = observed.get(SOURCE, partition)
        if seen is None or seen.version != outcome.source_sha256:
            metadata = dict(source.look)
            events.append(observation(SOURCE, partition, outcome.source_sha256, metadata))
            observed.noted(SOURCE, partition, outcome.source_sha256, metadata)
    if step.settings:
        seen = observed.get(SETTINGS, partition)
        if seen is None or seen.version != version:
            metadata = {"own": sorted(own)}
            events.append(observation(SETTINGS, partition, version, metadata))
            observed.noted(SETTINGS, partition, version, metadata)
    return events


def _failure(step: Step, failures: list[tuple[str, str]], total: int) -> dg.Failure:
    if len(failures) == 1:
        description = f"{step.asset}: {failures[0][1]}"
    else:
        listed = "; ".join(message for _, message in failures)
        description = f"{step.asset}: {len(failures)} of {total} images failed: {listed}"
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


def _ui_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    return {**metadata, "path": file_link(metadata["path"])}


def _process(
    step: Step,
    partition: str,
    store: Store,
    project: ProjectSettings,
    sources: _Sources,
    observed: LatestObservations,
) -> tuple[Outcome, list[dg.AssetObservation]]:
    if not is_valid_partition_key(partition):
        raise KsegError(f"refusing partition key {partition!r}: not a kseg partition key")
    image = project.for_image(store, partition)
    source = sources.file(partition) if SOURCE in step.reads else None
    inputs = Inputs(step, partition, store, image.settings, source=source, regions=image.regions)
    with store.lock(partition):
        try:
            outcome = run_image(step, inputs)
        except OSError as exc:  # the store: disk full, read-only, ...
            where = exc.filename or store.root
            raise KsegError(
                f"{partition}: cannot write to the store at {where} ({exc.strerror or exc})"
            ) from exc
    return outcome, _observe_changes(step, outcome, source, image.version, image.own, observed)


def step_asset(step: Step, *, batch_size: int = BATCH_SIZE) -> dg.AssetsDefinition:
    """The Dagster asset (one op) of a per-image step.

    Backfills and automation alike run at most ``batch_size`` images per run. With 1
    the asset has no backfill policy: Dagster then makes one run per partition tagged
    ``dagster/partition`` (with a policy, even a one-image run is tagged as a range),
    the tag the distributed profile's per-image run limit keys on.
    """
    policy = None if batch_size == 1 else dg.BackfillPolicy.multi_run(batch_size)
    spec = dg.AssetSpec(
        step.asset,
        deps=_deps(step),
        description=step.description,
        group_name=step.group,
        kinds=set(step.kinds),
        code_version=step.code_version,
        partitions_def=IMAGES,
        automation_condition=IMAGE_CONDITION,
        metadata=(
            {"dagster/column_schema": column_schema(step.column_schema)}
            if step.column_schema is not None
            else None
        ),
    )

    @dg.multi_asset(
        name=step.asset,
        specs=[spec],
        check_specs=_check_specs(step),
        partitions_def=IMAGES,
        backfill_policy=policy,
        can_subset=True,
        description=step.description,
        pool=IMAGE_POOL,
    )
    def _asset(
        context: dg.AssetExecutionContext,
        storage: KsegStorage,
        settings: dg.ResourceParam[ProjectSettings],
    ):
        store = storage.store()
        observed = latest_observations(context.instance)
        sources = _Sources(storage, observed)
        partitions = list(context.partition_keys)
        failures: list[tuple[str, str]] = []
        results = []
        started = time.perf_counter()
        for partition in partitions:
            try:
                outcome, events = _process(step, partition, store, settings, sources, observed)
            except KsegError as exc:
                failures.append((partition, str(exc)))
                context.log.error(f"{step.asset}: {exc}")
                continue
            for event in events:
                context.log_event(event)
            context.add_asset_metadata(
                _ui_metadata(outcome.metadata), asset_key=step.asset, partition_key=partition
            )
            for check in outcome.checks:
                results.append(
                    (partition, check.name, check.passed, check.description, check.metadata)
                )
        done = len(partitions) - len(failures)
        context.log.info(
            f"{step.asset}: {done} of {len(partitions)} image(s) done in "
            f"{time.perf_counter() - started:.2f} s"
        )
        if failures:
            raise _failure(step, failures, len(partitions))
        yield dg.MaterializeResult(asset_key=step.asset)
        yield from check_events(context, step.asset, results)

    return _asset
