"""A per-image step: every fact about it in one :class:`Step`, and how one image is run.

Each per-image asset is defined by one :class:`Step` in its own module of this package
(its description, group, kinds, code version, the inputs it reads, the settings that
key its cache, its files, its checks, how it computes and how it describes its output).
:func:`run_image` runs a step for one image:

1. the step's **cache key** is the SHA-256 of its asset name, code version, its inputs'
   cache keys (the chain starts at the SHA-256 of the image file) and only the settings
   it reads;
2. if the store holds an intact output under that key (every file with its recorded
   SHA-256), nothing is computed (a *hit*); otherwise the step computes its files and
   the store saves them, manifest last;
3. the step *describes* its stored output: metadata for the UI and its checks'
   results, derived once per stored output and saved beside it, so a hit reports
   them again without reading the output back.

The Dagster wiring of every step is one function, :func:`assets.steps.asset.step_asset`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from pipeline.errors import KsegError
from pipeline.settings import RegionSettings, SegmentSettings

from ..checks import CheckOutcome
from ..names import SOURCE
from ..settings import flat_values
from ..storage import Manifest, Store, StoreError
from .memo import MEMO, Memo

__all__ = [
    "DESCRIBE_VERSION",
    "CheckDef",
    "CheckOutcome",
    "Computed",
    "Inputs",
    "Outcome",
    "SourceFile",
    "Step",
    "Stored",
    "cache_key",
    "run_image",
]

#: Version of the code that derives metadata and check results from stored outputs:
#: bump it when a ``describe`` function changes what it reports.
DESCRIBE_VERSION = "2"


@dataclass(frozen=True)
class CheckDef:
    """An asset check of a step: evaluated on every image the step produces.

    A blocking check that fails stops the steps downstream of it in the run.
    """

    name: str
    description: str
    blocking: bool = True


@dataclass(frozen=True)
class Computed:
    """What a step computed for one image.

    Attributes
    ----------
    files : mapping of str to bytes
        File name to content (written to the store, manifest last).
    info : dict
        A small JSON summary kept in the manifest (sizes, K, ...).
    value : object, optional
        The output in memory, handed to later steps of the same run.
    """

    files: Mapping[str, bytes]
    info: dict[str, Any]
    value: Any = None


@dataclass(frozen=True)
class SourceFile:
    """The image file a ``raw_image`` step reads.

    Attributes
    ----------
    relpath : str
        Path relative to the incoming folder.
    name : str
        How errors name it (its full path or URL).
    read : callable
        Returns the file's bytes (checked and bounded by the caller).
    look : dict
        Filled by ``read``: the ``path``, ``bytes`` and ``stamp`` the file had.
    """

    relpath: str
    name: str
    read: Callable[[], bytes]
    look: dict[str, Any] = field(default_factory=dict)


def cache_key(
    asset: str, *, code_version: str, inputs: list[str], settings: Mapping[str, Any]
) -> str:
    """The cache key of one step: 64 hex digits (see the module docstring)."""
    document = {
        "asset": asset,
        "code_version": code_version,
        "inputs": list(inputs),
        "settings": dict(settings),
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Step:
    """Everything about one per-image asset.

    Attributes
    ----------
    asset : str
        Its asset key.
    description : str
        Shown in the UI.
    group : str
    kinds : frozenset of str
    code_version : str
        Bump it when a change to the step (or the engine code it calls) changes its
        output: it is part of the cache key, so the step and everything downstream is
        recomputed, and Dagster shows the old outputs as unsynced.
    reads : tuple of str
        The assets whose data it reads (``source_image`` for the file), in the order
        their cache keys are hashed. This is its lineage in the graph.
    settings : tuple of str
        The settings it reads (names of :data:`assets.settings.SETTING_NAMES`); only
        these key its cache. A step with settings also depends on ``image_settings``.
    main_file : str
        The file its metadata points to.
    compute : callable
        ``compute(inputs) -> Computed``.
    describe : callable
        ``describe(stored) -> (metadata, check outcomes)``, from the stored output.
    checks : tuple of CheckDef
    column_schema : pyarrow.Schema, optional
        The schema of its table, declared on the asset (for the UI).
    constants : mapping
        Fixed parameters that key its cache too (decoding limits, schema versions).
    """

    asset: str
    description: str
    group: str
    kinds: frozenset[str]
    code_version: str
    reads: tuple[str, ...]
    settings: tuple[str, ...]
    main_file: str
    compute: Callable[[Inputs], Computed]
    describe: Callable[[Stored], tuple[dict[str, Any], list[CheckOutcome]]]
    checks: tuple[CheckDef, ...] = ()
    column_schema: Any = None
    constants: Mapping[str, Any] = field(default_factory=dict)

    def settings_of(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The values that key this step's cache: its settings, then its constants.

        ``values`` holds every setting of the image (:func:`assets.settings.flat_values`).
        """
        return {**{name: values[name] for name in self.settings}, **self.constants}

    def key(self, upstream: Mapping[str, str], values: Mapping[str, Any]) -> str:
        """This step's cache key, given its inputs' keys (``upstream[name]``) and the
        image's settings (``values``, as for :meth:`settings_of`)."""
        return cache_key(
            self.asset,
            code_version=self.code_version,
            inputs=[upstream[name] for name in self.reads],
            settings=self.settings_of(values),
        )


class Inputs:
    """What one step may read for one image: exactly the inputs it declares.

    An input computed earlier in this process (the previous step of the run) comes
    from memory; otherwise it is read from the store, after checking that its files
    are intact. Reading an input the step does not declare is refused, so the graph's
    lineage is what the step really reads.

    Parameters
    ----------
    step : Step
    partition : str
    store : Store
    settings : SegmentSettings
        The image's effective settings.
    source : SourceFile, optional
        The image file (for a step that reads ``source_image``).
    memo : Memo
    regions : RegionSettings, optional
        The image's effective region settings (default: kseg's).
    """

    def __init__(
        self,
        step: Step,
        partition: str,
        store: Store,
        settings: SegmentSettings,
        *,
        source: SourceFile | None = None,
        memo: Memo = MEMO,
        regions: RegionSettings | None = None,
    ) -> None:
        self.step = step
        self.partition = partition
        self.store = store
        self.settings = settings
        self.regions = RegionSettings() if regions is None else regions
        self.values = flat_values(settings, self.regions)
        self.source = source
        self.memo = memo
        self._manifests: dict[str, Manifest] = {}
        self._source_bytes: bytes | None = None
        self.source_sha256: str | None = None

    def _require(self, name: str) -> None:
        if name not in self.step.reads:
            raise AssertionError(f"step {self.step.asset} reads {name}, which it does not declare")

    # -- the file ------------------------------------------------------------------------
    def source_bytes(self) -> bytes:
        """The image file's bytes (read once), whose SHA-256 starts the key chain.

        Raises
        ------
        KsegError
            If the partition has no file, or it cannot be read.
        """
        self._require(SOURCE)
        if self._source_bytes is None:
            if self.source is None:
                raise KsegError(
                    f"{self.partition}: no image in the incoming folder has this partition key"
                )
            self._source_bytes = self.source.read()
            self.source_sha256 = hashlib.sha256(self._source_bytes).hexdigest()
        return self._source_bytes

    # -- stored inputs -------------------------------------------------------------------
    def manifest(self, asset: str) -> Manifest:
        """The intact stored output of input ``asset``.

        Raises
        ------
        StoreError
            If it was never materialised for this image, or its files are damaged.
        """
        self._require(asset)
        if asset not in self._manifests:
            manifest = self.store.manifest(self.partition, asset)
            if manifest is None or not self.store.verify(manifest):
                raise StoreError(
                    f"{self.partition}: {asset} is missing or damaged in the store; "
                    "materialise it first"
                )
            self._manifests[asset] = manifest
        return self._manifests[asset]

    def key(self, name: str) -> str:
        """The cache key of an input (for ``source_image``, the file's SHA-256)."""
        if name == SOURCE:
            self.source_bytes()
            assert self.source_sha256 is not None
            return self.source_sha256
        return self.manifest(name).cache_key

    def read(self, asset: str, name: str) -> bytes:
        """A stored file of input ``asset`` (checked intact)."""
        self.manifest(asset)
        return self.store.read_bytes(self.partition, name)

    def value(self, asset: str, load: Callable[[Manifest], Any]) -> Any:
        """Input ``asset``'s output in memory: remembered, or ``load(manifest)``."""
        manifest = self.manifest(asset)
        return self.memo.get_or_load(asset, manifest.cache_key, lambda: load(manifest))


@dataclass
class Stored:
    """A step's stored output for one image, as its ``describe`` function sees it."""

    inputs: Inputs
    manifest: Manifest

    @property
    def info(self) -> dict[str, Any]:
        """The manifest's summary."""
        return self.manifest.info

    def read(self, name: str) -> bytes:
        """A file of this output."""
        return self.inputs.store.read_bytes(self.inputs.partition, name)

    def open(self, name: str) -> IO[bytes]:
        """Open a file of this output for reading."""
        return self.inputs.store.open(self.inputs.partition, name)

    def value(self, load: Callable[[Manifest], Any]) -> Any:
        """This output in memory (remembered from the compute, or ``load(manifest)``)."""
        step = self.inputs.step
        return self.inputs.memo.get_or_load(
            step.asset, self.manifest.cache_key, lambda: load(self.manifest)
        )


@dataclass
class Outcome:
    """What one step did for one image.

    Attributes
    ----------
    asset, partition, cache_key : str
    hit : bool
        True if the stored output was reused and nothing was computed.
    manifest : Manifest
    seconds : float
        Wall time of the step for this image (lookup, compute, save, describe).
    metadata : dict
    checks : list of CheckOutcome
    source_sha256 : str or None
        For a step reading the file: the SHA-256 of the bytes it read.
    """

    asset: str
    partition: str
    cache_key: str
    hit: bool
    manifest: Manifest
    seconds: float
    metadata: dict[str, Any]
    checks: list[CheckOutcome]
    source_sha256: str | None = None


def _described(step: Step, stored: Stored) -> tuple[dict[str, Any], list[CheckOutcome]]:
    import dagster as dg

    store = stored.inputs.store
    payload = store.description(stored.manifest, DESCRIBE_VERSION)
    if payload is not None:
        try:
            document = dg.deserialize_value(payload, as_type=dict)
            return dict(document["metadata"]), [CheckOutcome(**c) for c in document["checks"]]
        except Exception:  # unreadable (e.g. written by another Dagster version): derive again
            pass
    metadata, checks = step.describe(stored)
    document = {"metadata": metadata, "checks": [dataclasses.asdict(c) for c in checks]}
    store.save_description(stored.manifest, DESCRIBE_VERSION, dg.serialize_value(document))
    return metadata, checks


def _plain_number(value: float) -> float:
    return float(np.round(value, 4))


def run_image(step: Step, inputs: Inputs) -> Outcome:
    """Run ``step`` for one image: reuse its intact stored output, or compute and save it.

    Raises
    ------
    KsegError
        For a bad input (an unreadable or undecodable file, a missing input), naming
        the image and the reason.
    """
    started = time.perf_counter()
    key = step.key({name: inputs.key(name) for name in step.reads}, inputs.values)
    store = inputs.store
    manifest = store.intact(inputs.partition, step.asset, key)
    hit = manifest is not None
    if manifest is None:
        compute_started = time.perf_counter()
        computed = step.compute(inputs)
        manifest = store.save(
            inputs.partition,
            step.asset,
            cache_key=key,
            code_version=step.code_version,
            files=computed.files,
            info=computed.info,
            seconds=time.perf_counter() - compute_started,
        )
        if computed.value is not None:
            inputs.memo.put(step.asset, key, computed.value)
    metadata, checks = _described(step, Stored(inputs, manifest))
    seconds = time.perf_counter() - started
    entry = manifest.files[step.main_file]
    common = {
        "cache": "hit" if hit else "miss",
        "cache_key": key,
        "seconds": _plain_number(seconds),
        "compute_seconds": _plain_number(manifest.seconds),
        "path": store.uri(inputs.partition, step.main_file),
        "bytes": entry.bytes,
    }
    return Outcome(
        step.asset,
        inputs.partition,
        key,
        hit,
        manifest,
        seconds,
        {**common, **metadata},
        checks,
        inputs.source_sha256,
    )
