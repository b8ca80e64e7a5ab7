"""One image's steps within one run: cache lookups, lazy inputs, step outcomes.

A step either finds its output intact in the store under its cache key (a *hit*:
nothing is computed) or computes it and saves it (a *miss*). Inputs computed
earlier in the same run are passed in memory; inputs from earlier runs are read
from the store, after checking that they are intact.
"""

import dataclasses
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import numpy as np

from pipeline.elbow import ElbowChoice
from pipeline.render import decode_png
from pipeline.settings import SegmentSettings
from pipeline.sweep import SweepResult

from .cache import STEP_INPUTS, step_key
from .checks import CheckOutcome
from .incoming import IncomingImage
from .keys import CHOSEN, CODE_VERSIONS, DESCRIBE_VERSION, ELBOW, RAW
from .store import Manifest, Store, StoreError

__all__ = ["ImageWork", "StepOutcome"]

Files = dict[str, bytes]


@dataclass
class StepOutcome:
    """What one step did for one image, ready to be logged as events.

    Attributes
    ----------
    asset : str
    cache_key : str
    hit : bool
        True if the stored output was reused and nothing was computed.
    manifest : Manifest
    seconds : float
        Wall time of the step in this run (set again by the caller once metadata
        and checks are done).
    metadata : dict
        Materialisation metadata (filled by the step's ``describe``).
    checks : list of CheckOutcome
    """

    asset: str
    cache_key: str
    hit: bool
    manifest: Manifest
    seconds: float
    metadata: dict[str, Any] = field(default_factory=dict)
    checks: list[CheckOutcome] = field(default_factory=list)

    def common_metadata(self, store: Store, main_file: str) -> dict[str, Any]:
        """Metadata every step reports: cache status, key, timings, main file."""
        entry = self.manifest.files[main_file]
        return {
            "cache": "hit" if self.hit else "miss",
            "cache_key": self.cache_key,
            "seconds": round(self.seconds, 4),
            "compute_seconds": round(self.manifest.seconds, 4),
            "path": dg.MetadataValue.path(store.uri(self.manifest.partition, main_file)),
            "bytes": entry.bytes,
        }


class ImageWork:
    """The state one image's steps share during a run.

    Parameters
    ----------
    store : Store
    partition : str
    settings : SegmentSettings
    source : IncomingImage or None
        The file, when ``raw_image`` is computed in this run.
    """

    def __init__(
        self,
        store: Store,
        partition: str,
        settings: SegmentSettings,
        source: IncomingImage | None = None,
    ) -> None:
        self.store = store
        self.partition = partition
        self.settings = settings
        self.source = source
        self.source_bytes: bytes | None = None
        self.source_sha256: str | None = None
        self.keys: dict[str, str] = {}
        self.manifests: dict[str, Manifest] = {}
        self.memo: dict[str, Any] = {}

    # -- inputs -----------------------------------------------------------------------
    def manifest(self, asset: str) -> Manifest:
        """The intact stored output of an upstream ``asset`` (computed now or earlier).

        Raises
        ------
        StoreError
            If it was never materialised for this image or its files are damaged.
        """
        if asset not in self.manifests:
            manifest = self.store.manifest(self.partition, asset)
            if manifest is None or not self.store.verify(manifest):
                raise StoreError(
                    f"{self.partition}: {asset} is missing or damaged in the store; "
                    "materialise it first"
                )
            self.manifests[asset] = manifest
            self.keys[asset] = manifest.cache_key
        return self.manifests[asset]

    def key(self, name: str) -> str:
        """The cache key of an input (``source`` is the file's SHA-256)."""
        if name == "source":
            if self.source_sha256 is None:
                raise StoreError(f"{self.partition}: the source file was not read")
            return self.source_sha256
        if name not in self.keys:
            self.manifest(name)
        return self.keys[name]

    def read(self, name: str) -> bytes:
        """A stored file of this image."""
        return self.store.read_bytes(self.partition, name)

    def lazy(self, name: str, load: Callable[[], Any]) -> Any:
        """``load()`` once per run and image, then the remembered value."""
        if name not in self.memo:
            self.memo[name] = load()
        return self.memo[name]

    def rgb(self) -> np.ndarray:
        """The decoded image, (H, W, 3) uint8, from memory or ``raw_image.png``."""
        self.manifest(RAW)
        return self.lazy("rgb", lambda: decode_png(self.read("raw_image.png")))

    def sweep(self) -> SweepResult:
        """The sweep, from memory or ``elbow_metrics.parquet``."""
        import pyarrow.parquet as pq

        from pipeline.sweep import sweep_from_arrow

        self.manifest(ELBOW)
        return self.lazy(
            "sweep",
            lambda: sweep_from_arrow(pq.read_table(io.BytesIO(self.read("elbow_metrics.parquet")))),
        )

    def choice(self) -> ElbowChoice:
        """The chosen K, from memory or ``chosen_k.json``."""
        self.manifest(CHOSEN)
        return self.lazy(
            "choice",
            lambda: ElbowChoice.from_dict(json.loads(self.read("chosen_k.json"))["choice"]),
        )

    def image_size(self) -> tuple[int, int]:
        """(height, width) of the decoded image, from the ``raw_image`` manifest."""
        info = self.manifest(RAW).info
        return int(info["height"]), int(info["width"])

    # -- describing a step's output ---------------------------------------------------
    def describe(
        self,
        outcome: StepOutcome,
        main_file: str,
        make: Callable[[], tuple[dict[str, Any], list[CheckOutcome]]],
    ) -> None:
        """Fill ``outcome``'s metadata and checks, deriving them once per stored output.

        ``make()`` returns the step's own metadata and its check results, derived
        from the stored output (e.g. by reading a Parquet file). Both depend only on
        the output's bytes, so they are saved next to the manifest and, on later
        cache hits whose files verify with the same SHA-256, read back instead of
        derived again. The common metadata (cache status, times, path) is per run.
        """
        # The cache key already covers the step's code version; DESCRIBE_VERSION covers
        # the code that derives the description.
        version = DESCRIBE_VERSION
        described = self._saved_description(outcome.manifest, version)
        if described is None:
            described = make()
            payload = dg.serialize_value(
                {
                    "metadata": described[0],
                    "checks": [dataclasses.asdict(check) for check in described[1]],
                }
            )
            self.store.save_description(outcome.manifest, version, payload)
        metadata, checks = described
        outcome.metadata = {**outcome.common_metadata(self.store, main_file), **metadata}
        outcome.checks = checks

    def _saved_description(
        self, manifest: Manifest, version: str
    ) -> tuple[dict[str, Any], list[CheckOutcome]] | None:
        payload = self.store.description(manifest, version)
        if payload is None:
            return None
        try:
            document = dg.deserialize_value(payload, as_type=dict)
            checks = [CheckOutcome(**check) for check in document["checks"]]
            return dict(document["metadata"]), checks
        except Exception:  # unreadable (e.g. written by another Dagster version): derive again
            return None

    # -- running a step ---------------------------------------------------------------
    def run(self, asset: str, compute: Callable[[], tuple[Files, dict[str, Any]]]) -> StepOutcome:
        """Reuse ``asset``'s stored output if intact for its cache key, else compute it.

        Parameters
        ----------
        asset : str
        compute : callable
            Returns ``(files, info)``: file name to bytes, and the manifest summary.

        Returns
        -------
        StepOutcome
            With empty metadata and checks (the caller describes the output).
        """
        started = time.perf_counter()
        key = step_key(asset, {name: self.key(name) for name in STEP_INPUTS[asset]}, self.settings)
        manifest = self.store.intact(self.partition, asset, key)
        hit = manifest is not None
        if manifest is None:
            compute_start = time.perf_counter()
            files, info = compute()
            manifest = self.store.save(
                self.partition,
                asset,
                cache_key=key,
                code_version=CODE_VERSIONS[asset],
                files=files,
                info=info,
                seconds=time.perf_counter() - compute_start,
            )
        self.keys[asset] = key
        self.manifests[asset] = manifest
        return StepOutcome(asset, key, hit, manifest, time.perf_counter() - started)
