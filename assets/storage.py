"""Where the images come from and where every output lives: the one storage module.

:class:`KsegStorage` is the Dagster resource that knows both places (the incoming
folder and the storage root); :class:`Store` reads and writes the outputs under the
root. Both come from the environment through :class:`dagster.EnvVar`
(``KSEG_INCOMING_DIR`` and ``KSEG_STORE_ROOT``) with project-local defaults,
``data/incoming`` and ``data/store``.

Layout under the storage root (a local folder or any fsspec URL, through
universal-pathlib)::

    <root>/images/<partition key>/raw_image.png
                                  raw_image.manifest.json
                                  raw_image.description.json   (metadata, checks)
                                  pixel_features.parquet
                                  ...
    <root>/report/segmentation_report.parquet
                  segmentation_report.manifest.json
    <root>/settings/<partition key>.json  (an image's own settings, if it has any)
    <root>/locks/<partition key>.lock     (local roots: one run at a time per image)
    <root>/trash/<UTC time>-<partition key>/   (outputs of deleted images)

Each step writes its files first and its manifest last, every file under a
temporary name renamed into place, so a reader never sees half a file. The
manifest holds the step's cache key, code version, the SHA-256 and size of every
file it wrote, the compute time and a small JSON summary (``info``). A stored
output is *intact* for a cache key when the manifest has that key and every file
still has the recorded SHA-256; only then is it reused.

Partition keys and file names are checked against a strict alphabet and, for
local roots, every resolved path must lie inside the root, so nothing is ever
written outside it.

Two runs on the same image: :meth:`Store.lock` is an exclusive per-partition file
lock (``flock``, so the kernel releases it when its holder dies, even by SIGKILL).
The per-image steps hold it while they look up, compute, save and describe one
image's outputs, so a second run waits and then finds a consistent, complete set
(cache hits for the same settings). Remote (fsspec) roots have no lock; there the
atomic renames and the SHA-256 check on every reuse still mean a mix of two runs'
files is never taken for a cache hit: it is recomputed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pathlib
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

import dagster as dg
from pydantic import Field
from upath import UPath

from pipeline.errors import KsegError

from .filesystems import FileTreeError, LocalTree, RemoteTree
from .incoming import (
    DEFAULT_MAX_FILE_BYTES,
    Scan,
    is_remote,
    is_valid_partition_key,
    scan_incoming,
)

__all__ = [
    "INCOMING_ENV",
    "LOCK_TIMEOUT",
    "MANIFEST_VERSION",
    "MAX_FILE_ENV",
    "PROJECT_ROOT",
    "STORE_ENV",
    "TRASH_FOLDER",
    "FileEntry",
    "KsegStorage",
    "Manifest",
    "Store",
    "StoreError",
    "default_storage",
    "layout_problem",
    "parquet_bytes",
]

INCOMING_ENV = "KSEG_INCOMING_DIR"
STORE_ENV = "KSEG_STORE_ROOT"
MAX_FILE_ENV = "KSEG_MAX_FILE_BYTES"
#: Folder under the storage root that receives the outputs of deleted images.
TRASH_FOLDER = "trash"
#: Folder under the storage root holding the images' own settings.
SETTINGS_FOLDER = "settings"

MANIFEST_VERSION = 1
#: Longest wait (seconds) for another run to release an image's lock.
LOCK_TIMEOUT = 3600.0
_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*(?:\.[a-z0-9_]+)*$")
_CHUNK = 1 << 20


class StoreError(KsegError):
    """A path outside the storage root, an invalid name, or a missing output."""


@dataclass(frozen=True)
class FileEntry:
    """One file of a stored output."""

    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    """What a step stored, and under which cache key.

    Attributes
    ----------
    asset : str
    partition : str or None
        None for unpartitioned assets.
    cache_key, code_version : str
    files : dict of str to FileEntry
        File name (in the partition's folder) to checksum and size.
    info : dict
        A small JSON summary of the output (sizes, K, ...), used for metadata and the report.
    seconds : float
        Wall time of the compute that produced the files.
    created : str
        ISO 8601 UTC time the manifest was written.
    """

    asset: str
    partition: str | None
    cache_key: str
    code_version: str
    files: dict[str, FileEntry]
    info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    created: str = ""

    def to_json(self) -> bytes:
        """The manifest as UTF-8 JSON."""
        document = {"manifest_version": MANIFEST_VERSION, **asdict(self)}
        return json.dumps(document, indent=1, sort_keys=True, allow_nan=False).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """Parse :meth:`to_json` output, checking every field's type.

        Raises
        ------
        ValueError
            If the document is not a well-formed manifest of this version.
        """
        document = json.loads(data)
        if not isinstance(document, dict) or document.get("manifest_version") != MANIFEST_VERSION:
            raise ValueError("not a kseg manifest of a known version")
        files = document.get("files")
        if not isinstance(files, dict) or not all(
            isinstance(name, str)
            and _NAME.fullmatch(name)
            and isinstance(entry, dict)
            and isinstance(entry.get("sha256"), str)
            and isinstance(entry.get("bytes"), int)
            and set(entry) == {"sha256", "bytes"}
            for name, entry in files.items()
        ):
            raise ValueError("the manifest's files are not a map of file names to checksums")
        fields = {
            "asset": str,
            "cache_key": str,
            "code_version": str,
            "info": dict,
            "seconds": (int, float),
            "created": str,
        }
        for name, kind in fields.items():
            if not isinstance(document.get(name), kind):
                raise ValueError(f"the manifest's {name} is missing or of the wrong type")
        partition = document.get("partition")
        if partition is not None and not is_valid_partition_key(partition):
            raise ValueError("the manifest's partition is not a kseg partition key")
        return cls(
            asset=document["asset"],
            partition=partition,
            cache_key=document["cache_key"],
            code_version=document["code_version"],
            files={name: FileEntry(**entry) for name, entry in files.items()},
            info=document["info"],
            seconds=float(document["seconds"]),
            created=document["created"],
        )


def _file_sha256(stream: IO[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: stream.read(_CHUNK), b""):
        digest.update(chunk)
    return digest.hexdigest()


#: What a damaged or hostile store entry raises: reading it is a cache miss.
_UNUSABLE = (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileTreeError)


class Store:
    """Stored outputs under one root.

    Parameters
    ----------
    root : str or os.PathLike
        A local folder (created on first write) or an fsspec URL such as
        ``s3://bucket/kseg`` or ``memory://kseg``.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        path = UPath(root)
        self.local = isinstance(path, pathlib.Path)
        if self.local:
            path = UPath(os.path.abspath(os.path.expanduser(os.fspath(path))))
            self.files: LocalTree | RemoteTree = LocalTree(os.fspath(path))
        else:
            self.files = RemoteTree(path)
        self.root = path

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # -- names ------------------------------------------------------------------------
    @staticmethod
    def _parts(partition: str | None) -> tuple[str, ...]:
        if partition is None:
            return ("report",)
        if not is_valid_partition_key(partition):
            raise StoreError(f"refusing partition key {partition!r}: not a kseg partition key")
        return ("images", partition)

    @staticmethod
    def _name(name: str) -> str:
        if not _NAME.fullmatch(name):
            raise StoreError(f"refusing file name {name!r}")
        return name

    def folder(self, partition: str | None) -> UPath:
        """The folder of a partition's outputs (``report/`` for unpartitioned assets).

        Raises
        ------
        StoreError
            If ``partition`` is not a valid partition key.
        """
        path = self.root
        for part in self._parts(partition):
            path = path / part
        return path

    def uri(self, partition: str | None, name: str) -> str:
        """The path of a stored file as a string (for metadata and the report)."""
        return self.files.where(self._parts(partition), self._name(name))

    # -- reading ----------------------------------------------------------------------
    def read_bytes(self, partition: str | None, name: str) -> bytes:
        """The content of a stored file.

        Raises
        ------
        StoreError
            If it is missing, a link, or not a regular file.
        """
        try:
            return self.files.read(self._parts(partition), self._name(name))
        except _UNUSABLE as exc:
            where = partition or "report"
            raise StoreError(f"{where}: {name} is not in the store ({exc})") from exc

    def open(self, partition: str | None, name: str) -> IO[bytes]:
        """Open a stored file for reading (binary)."""
        try:
            return self.files.open(self._parts(partition), self._name(name))
        except _UNUSABLE as exc:
            raise StoreError(
                f"{partition or 'report'}: {name} is not in the store ({exc})"
            ) from exc

    def manifest(self, partition: str | None, asset: str) -> Manifest | None:
        """The manifest of ``asset`` for ``partition``, or None if absent or unusable.

        An unusable manifest (not JSON, wrong types, a folder or a link in its place, a
        partition folder that is a file) is a cache miss, never an error of the run.
        """
        try:
            data = self.files.read(self._parts(partition), self._name(f"{asset}.manifest.json"))
            manifest = Manifest.from_json(data)
        except (*_UNUSABLE, ValueError, UnicodeDecodeError, RecursionError):
            return None
        if manifest.partition != partition or manifest.asset != asset:
            return None
        return manifest

    def verify(self, manifest: Manifest) -> bool:
        """True if every file of ``manifest`` exists with its recorded size and SHA-256."""
        parts = self._parts(manifest.partition)
        for name, entry in manifest.files.items():
            try:
                with self.files.open(parts, name) as stream:
                    if _file_sha256(stream) != entry.sha256:
                        return False
            except _UNUSABLE:
                return False
        return True

    def present(self, manifest: Manifest) -> bool:
        """True if every file of ``manifest`` exists with its recorded size (no hashing)."""
        parts = self._parts(manifest.partition)
        return all(
            self.files.size(parts, name) == entry.bytes for name, entry in manifest.files.items()
        )

    def intact(self, partition: str | None, asset: str, cache_key: str) -> Manifest | None:
        """The manifest if the stored output has ``cache_key`` and its files verify, else None."""
        manifest = self.manifest(partition, asset)
        if manifest is None or manifest.cache_key != cache_key or not self.verify(manifest):
            return None
        return manifest

    # -- locking ----------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, partition: str | None, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
        """Hold the exclusive lock of ``partition`` (``report`` for None) for the block.

        Local roots only (``<root>/locks/<key>.lock``, an ``flock`` the kernel releases
        when its holder dies); a no-op for remote roots. Once an image's lock is held
        no other writer of its folder is alive, so temporary files a killed writer left
        there are removed.

        Raises
        ------
        StoreError
            If the key is invalid, the lock file is a link, or another holder keeps
            the lock for ``timeout`` s.
        """
        parts = self._parts(partition)
        name = parts[-1]
        try:
            with self.files.lock(("locks",), f"{name}.lock", timeout):
                with contextlib.suppress(FileTreeError):
                    self.files.remove_temporaries(parts)
                yield
        except TimeoutError as exc:
            raise StoreError(
                f"{name}: another run kept this image locked for {timeout:g} s; try again later"
            ) from exc
        except FileTreeError as exc:
            raise StoreError(str(exc)) from exc

    # -- writing ----------------------------------------------------------------------
    def _write(self, parts: tuple[str, ...], name: str, data: bytes) -> None:
        try:
            self.files.write(parts, self._name(name), data)
        except FileTreeError as exc:
            raise StoreError(str(exc)) from exc

    def save(
        self,
        partition: str | None,
        asset: str,
        *,
        cache_key: str,
        code_version: str,
        files: Mapping[str, bytes],
        info: Mapping[str, Any] | None = None,
        seconds: float = 0.0,
    ) -> Manifest:
        """Write a step's files, then its manifest, each atomically; then remove the
        files the step's previous manifest listed that it no longer writes.

        Parameters
        ----------
        partition : str or None
        asset : str
        cache_key, code_version : str
        files : mapping of str to bytes
            File name to content.
        info : mapping, optional
            JSON-able summary stored in the manifest.
        seconds : float
            Compute time to record.

        Returns
        -------
        Manifest

        Raises
        ------
        StoreError
            If a name is invalid or a folder on the way is a link.
        """
        parts = self._parts(partition)
        for name in files:
            self._name(name)
        previous = self.manifest(partition, asset)
        entries = {}
        for name, data in files.items():
            self._write(parts, name, data)
            entries[name] = FileEntry(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
        manifest = Manifest(
            asset=asset,
            partition=partition,
            cache_key=cache_key,
            code_version=code_version,
            files=entries,
            info=json.loads(json.dumps(dict(info or {}), allow_nan=False)),
            seconds=float(seconds),
            created=datetime.fromtimestamp(time.time(), UTC).isoformat(timespec="seconds"),
        )
        self._write(parts, f"{asset}.manifest.json", manifest.to_json())
        if previous is not None:
            self._remove_dropped(partition, asset, set(previous.files) - set(files))
        return manifest

    def _remove_dropped(self, partition: str | None, asset: str, dropped: set[str]) -> None:
        """Remove files a step's previous version wrote and this one no longer does (a
        renamed output after an upgrade), unless another step's manifest lists them."""
        if not dropped:
            return
        parts = self._parts(partition)
        suffix = ".manifest.json"
        for name in self.files.names(parts):
            other = name[: -len(suffix)] if name.endswith(suffix) else None
            if other and other != asset and (found := self.manifest(partition, other)):
                dropped -= set(found.files)
        for name in dropped:
            self.files.remove(parts, name)

    # -- descriptions -----------------------------------------------------------------
    def description(self, manifest: Manifest, version: str) -> str | None:
        """The description saved for exactly ``manifest``'s files, or None.

        A description (the metadata and check results a step derived from its
        output) is a pure function of the output's bytes, so it is reused only when
        it was made, by the same ``version`` of the describing code, for the very
        files the manifest lists (same cache key, same SHA-256 of every file, same
        summary ``info``).
        """
        name = f"{manifest.asset}.description.json"
        try:
            document = json.loads(self.files.read(self._parts(manifest.partition), name))
        except (*_UNUSABLE, ValueError, UnicodeDecodeError, RecursionError):
            return None
        files = {name: entry.sha256 for name, entry in manifest.files.items()}
        if (
            not isinstance(document, dict)
            or document.get("version") != version
            or document.get("cache_key") != manifest.cache_key
            or document.get("files") != files
            or document.get("info") != manifest.info
            or not isinstance(document.get("payload"), str)
        ):
            return None
        return document["payload"]

    def save_description(self, manifest: Manifest, version: str, payload: str) -> None:
        """Store ``payload`` (a string) as the description of ``manifest``'s files."""
        document = {
            "version": version,
            "cache_key": manifest.cache_key,
            "files": {name: entry.sha256 for name, entry in manifest.files.items()},
            "info": manifest.info,
            "payload": payload,
        }
        self._write(
            self._parts(manifest.partition),
            f"{manifest.asset}.description.json",
            json.dumps(document).encode("utf-8"),
        )

    # -- an image's own settings --------------------------------------------------------
    @staticmethod
    def _settings_name(partition: str) -> str:
        if not is_valid_partition_key(partition):
            raise StoreError(f"refusing partition key {partition!r}: not a kseg partition key")
        return f"{partition}.json"

    def own_settings(self, partition: str) -> bytes | None:
        """The raw document of an image's own settings, or None if it has none.

        Raises
        ------
        StoreError
            If something that is not a regular file is in its place.
        """
        try:
            return self.files.read((SETTINGS_FOLDER,), self._settings_name(partition))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (IsADirectoryError, FileTreeError) as exc:
            raise StoreError(f"{partition}: its settings file is unusable ({exc})") from exc

    def save_own_settings(self, partition: str, document: bytes | None) -> None:
        """Write (or, with None, remove) an image's own settings document, atomically."""
        name = self._settings_name(partition)
        try:
            if document is None:
                self.files.remove((SETTINGS_FOLDER,), name)
            else:
                self.files.write((SETTINGS_FOLDER,), name, document)
        except FileTreeError as exc:
            raise StoreError(str(exc)) from exc

    def partitions_with_own_settings(self) -> set[str]:
        """Partition keys that have a settings file (one listing of the folder)."""
        try:
            names = self.files.names((SETTINGS_FOLDER,))
        except FileTreeError:
            return set()
        keys = {name[: -len(".json")] for name in names if name.endswith(".json")}
        return {key for key in keys if is_valid_partition_key(key)}

    # -- deleted images -------------------------------------------------------------------
    def trash(
        self,
        partition: str,
        *,
        source_path: str | None = None,
        when: datetime | None = None,
        lock_timeout: float = 0.5,
    ) -> str | None:
        """Move an image's outputs (and its own settings) to ``trash/<UTC time>-<key>/``.

        The move holds the image's lock, so it never interleaves with a run writing
        that image. A ``trashed.json`` beside the files says what they were. Entries are
        moved as they are (a link planted in their place is moved, never followed).

        Parameters
        ----------
        partition : str
        source_path : str, optional
            The deleted file's path in the incoming folder (recorded in ``trashed.json``).
        when : datetime, optional
            Time of the deletion (default now).
        lock_timeout : float
            Seconds to wait for a running step to release the image.

        Returns
        -------
        str or None
            Where the outputs went, or None if the image had none.

        Raises
        ------
        StoreError
            If a run holds the image's lock (try again later).
        """
        when = when or datetime.now(UTC)
        parts = self._parts(partition)
        settings = self._settings_name(partition)
        with self.lock(partition, timeout=lock_timeout):
            has_outputs = self.files.exists(parts[:-1], parts[-1])
            has_settings = self.files.exists((SETTINGS_FOLDER,), settings)
            if not has_outputs and not has_settings:
                return None
            stamp = when.strftime("%Y%m%dT%H%M%S%fZ")
            target = (TRASH_FOLDER, f"{stamp}-{partition}")
            if has_outputs:
                self.files.move(parts[:-1], parts[-1], target, "outputs")
            if has_settings:
                self.files.move((SETTINGS_FOLDER,), settings, target, "settings.json")
            note = {
                "partition_key": partition,
                "source_path": source_path,
                "trashed_at": when.isoformat(timespec="seconds"),
                "reason": "the image was deleted from the incoming folder",
            }
            self._write(target, "trashed.json", json.dumps(note, indent=1).encode("utf-8"))
        return self.files.where(target)


def parquet_bytes(table: Any) -> bytes:
    """Serialise an Arrow table to Parquet bytes (zstd, as :mod:`pipeline.features` does)."""
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", compression_level=3)
    return buffer.getvalue()


def _project_root() -> pathlib.Path:
    here = pathlib.Path(__file__).resolve().parents[1]
    return here if (here / "pyproject.toml").is_file() else pathlib.Path.cwd()


#: The repository root (where ``pyproject.toml`` is), or the working directory.
PROJECT_ROOT = _project_root()
DEFAULT_INCOMING = str(PROJECT_ROOT / "data" / "incoming")
DEFAULT_STORE = str(PROJECT_ROOT / "data" / "store")


class KsegStorage(dg.ConfigurableResource):
    """Where kseg reads images (the incoming folder) and writes every output (the store)."""

    incoming_dir: str = Field(
        default=DEFAULT_INCOMING,
        description=f"Folder scanned for images (env {INCOMING_ENV}; default data/incoming).",
    )
    store_root: str = Field(
        default=DEFAULT_STORE,
        description=f"Folder or fsspec URL for every output (env {STORE_ENV}; default data/store).",
    )
    max_file_bytes: int = Field(
        default=DEFAULT_MAX_FILE_BYTES,
        description=f"Largest image file read, in bytes (env {MAX_FILE_ENV}; default 1 GiB); "
        "larger files are refused before reading.",
    )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Refuse, before a run touches any file, a store and an incoming folder that
        overlap (see :meth:`check_layout`); a sensor tick says so in its skip reason."""
        if context.run is not None:
            self.check_layout()

    def store(self) -> Store:
        """The output store under :attr:`store_root`."""
        return Store(self.store_root)

    def check_layout(self) -> None:
        """Refuse a store inside the incoming folder, or the other way round.

        Raises
        ------
        KsegError
            Saying which is inside which and what to do.
        """
        problem = layout_problem(self.incoming_dir, self.store_root)
        if problem:
            raise KsegError(problem)

    def incoming(self) -> pathlib.Path | UPath:
        """The incoming folder: an absolute local path, or an fsspec URL."""
        if is_remote(self.incoming_dir):
            return UPath(self.incoming_dir)
        return pathlib.Path(self.incoming_dir).expanduser().absolute()

    def scan(self) -> Scan:
        """Scan the incoming folder (see :func:`assets.incoming.scan_incoming`)."""
        return scan_incoming(self.incoming())


def layout_problem(incoming: str, store_root: str) -> str | None:
    """Why these incoming folder and store root cannot work together, or None.

    A store inside the incoming folder would have its own outputs taken for new images
    (one image became 6, then 31 partitions); an incoming folder inside the store would
    be trashed with the outputs it lives among.
    """
    if is_remote(store_root) or is_remote(incoming):
        if str(store_root).rstrip("/").startswith(str(incoming).rstrip("/") + "/"):
            return (
                f"the store {store_root!r} ({STORE_ENV}) is inside the incoming folder "
                f"{incoming!r} ({INCOMING_ENV}): its outputs would be taken for new images"
            )
        return None
    inside = os.path.realpath(os.path.expanduser(incoming))
    store = os.path.realpath(os.path.expanduser(store_root))
    if os.path.commonpath([inside, store]) == inside:
        return (
            f"the store {store_root!r} ({STORE_ENV}) is inside the incoming folder {incoming!r} "
            f"({INCOMING_ENV}): its outputs would be taken for new images; put them apart"
        )
    if os.path.commonpath([inside, store]) == store:
        return (
            f"the incoming folder {incoming!r} ({INCOMING_ENV}) is inside the store "
            f"{store_root!r} ({STORE_ENV}): put them apart"
        )
    return None


def _env_or_default(name: str, default: str) -> str:
    # EnvVar has no default (dagster-io/dagster#16232): a set variable is passed as an
    # EnvVar, resolved when the resource is initialised; otherwise the project default.
    return dg.EnvVar(name) if name in os.environ else default


def default_storage() -> KsegStorage:
    """The resource the code location uses: environment variables, else the defaults.

    Raises
    ------
    KsegError
        If the store and the incoming folder overlap: the code location does not load.
    """
    problem = layout_problem(
        os.environ.get(INCOMING_ENV) or DEFAULT_INCOMING, os.environ.get(STORE_ENV) or DEFAULT_STORE
    )
    if problem:
        raise KsegError(f"{problem} (the kseg code location does not load)")
    max_bytes = (
        dg.EnvVar.int(MAX_FILE_ENV) if MAX_FILE_ENV in os.environ else DEFAULT_MAX_FILE_BYTES
    )
    return KsegStorage(
        incoming_dir=_env_or_default(INCOMING_ENV, DEFAULT_INCOMING),
        store_root=_env_or_default(STORE_ENV, DEFAULT_STORE),
        max_file_bytes=max_bytes,
    )
