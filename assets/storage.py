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
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

import dagster as dg
from filelock import FileLock, Timeout
from pydantic import Field
from upath import UPath

from pipeline.errors import KsegError
from pipeline.io import atomic_write_bytes

from .incoming import DEFAULT_MAX_FILE_BYTES, Scan, is_valid_partition_key, scan_incoming

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
        """Parse :meth:`to_json` output.

        Raises
        ------
        ValueError
            If the document is not a manifest of this version.
        """
        document = json.loads(data)
        if not isinstance(document, dict) or document.get("manifest_version") != MANIFEST_VERSION:
            raise ValueError("not a kseg manifest of a known version")
        document.pop("manifest_version")
        files = {name: FileEntry(**entry) for name, entry in document.pop("files").items()}
        return cls(files=files, **document)


def _file_sha256(stream: IO[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: stream.read(_CHUNK), b""):
        digest.update(chunk)
    return digest.hexdigest()


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
        self.root = path
        self._real_root = os.path.realpath(path) if self.local else None
        self._inside: set[str | None] = set()  # partitions whose folder was checked

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # -- paths ------------------------------------------------------------------------
    def folder(self, partition: str | None) -> UPath:
        """The folder of a partition's outputs (``report/`` for unpartitioned assets).

        Raises
        ------
        StoreError
            If ``partition`` is not a valid partition key.
        """
        if partition is None:
            return self.root / "report"
        if not is_valid_partition_key(partition):
            raise StoreError(f"refusing partition key {partition!r}: not a kseg partition key")
        return self.root / "images" / partition

    def path(self, partition: str | None, name: str) -> UPath:
        """The path of file ``name`` of ``partition``, checked to stay inside the root.

        Raises
        ------
        StoreError
            If the name is invalid or the path would leave the storage root.
        """
        if not _NAME.fullmatch(name):
            raise StoreError(f"refusing file name {name!r}")
        folder = self.folder(partition)
        target = folder / name
        if self._real_root is not None:
            # The folder is resolved once per store object (``realpath`` costs a
            # system call per path component); a name cannot leave its folder
            # (``_NAME``), so only a symbolic link in its place could, and that costs
            # one ``lstat`` to rule out.
            if partition not in self._inside:
                self._check_inside(folder)
                self._inside.add(partition)
            if os.path.islink(target):
                self._check_inside(target)
        return target

    def _check_inside(self, path: UPath) -> None:
        root = self._real_root
        real = os.path.realpath(path)
        if os.path.commonpath([root, real]) != root:
            raise StoreError(f"refusing to use {str(path)!r}: it is outside {root!r}")

    # -- reading ----------------------------------------------------------------------
    def read_bytes(self, partition: str | None, name: str) -> bytes:
        """The content of a stored file.

        Raises
        ------
        StoreError
            If the file does not exist.
        """
        try:
            return self.path(partition, name).read_bytes()
        except FileNotFoundError as exc:
            where = partition or "report"
            raise StoreError(f"{where}: {name} is not in the store") from exc

    def open(self, partition: str | None, name: str) -> IO[bytes]:
        """Open a stored file for reading (binary)."""
        return self.path(partition, name).open("rb")

    def manifest(self, partition: str | None, asset: str) -> Manifest | None:
        """The manifest of ``asset`` for ``partition``, or None if absent or unreadable."""
        try:
            data = self.path(partition, f"{asset}.manifest.json").read_bytes()
            return Manifest.from_json(data)
        except (FileNotFoundError, ValueError, TypeError, KeyError):
            return None

    def verify(self, manifest: Manifest) -> bool:
        """True if every file of ``manifest`` exists with its recorded size and SHA-256."""
        for name, entry in manifest.files.items():
            try:
                path = self.path(manifest.partition, name)
                with path.open("rb") as stream:
                    if _file_sha256(stream) != entry.sha256:
                        return False
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                return False
        return True

    def present(self, manifest: Manifest) -> bool:
        """True if every file of ``manifest`` exists with its recorded size (no hashing)."""
        for name, entry in manifest.files.items():
            try:
                if self.path(manifest.partition, name).stat().st_size != entry.bytes:
                    return False
            except (FileNotFoundError, NotADirectoryError):
                return False
        return True

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

        Local roots only (``<root>/locks/<key>.lock``); a no-op for remote roots. Once
        an image's lock is held no other writer of its folder is alive, so temporary
        files left there by a killed writer are removed.

        Raises
        ------
        StoreError
            If the key is invalid, or another holder keeps the lock for ``timeout`` s.
        """
        folder = self.folder(partition)  # checks the key
        if not self.local:
            yield
            return
        name = folder.name
        target = self.root / "locks" / f"{name}.lock"
        root = self._real_root
        if os.path.commonpath([root, os.path.realpath(target)]) != root:
            raise StoreError(f"refusing to use {str(target)!r}: it is outside {root!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(os.fspath(target), timeout=timeout)
        try:
            lock.acquire()
        except Timeout as exc:
            raise StoreError(
                f"{name}: another run kept this image locked for {timeout:g} s; try again later"
            ) from exc
        try:
            if partition is not None:
                for leftover in folder.glob(".*.tmp"):
                    with contextlib.suppress(FileNotFoundError):
                        leftover.unlink()
            yield
        finally:
            lock.release()

    # -- writing ----------------------------------------------------------------------
    def _write(self, target: UPath, data: bytes) -> None:
        if self.local:
            # No fsync per file: a reader never sees half a file (temporary name, then
            # rename), and a file torn by a power cut fails the SHA-256 check of
            # ``intact``, so its step is computed again rather than trusted.
            atomic_write_bytes(target, data, sync=False)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            temporary.write_bytes(data)
            temporary.rename(target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            raise

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
        """Write a step's files, then its manifest, each atomically.

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
        """
        entries = {}
        targets = {name: self.path(partition, name) for name in files}
        manifest_path = self.path(partition, f"{asset}.manifest.json")
        for name, data in files.items():
            self._write(targets[name], data)
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
        self._write(manifest_path, manifest.to_json())
        return manifest

    # -- descriptions -----------------------------------------------------------------
    def _description_path(self, manifest: Manifest) -> UPath:
        return self.path(manifest.partition, f"{manifest.asset}.description.json")

    def description(self, manifest: Manifest, version: str) -> str | None:
        """The description saved for exactly ``manifest``'s files, or None.

        A description (the metadata and check results a step derived from its
        output) is a pure function of the output's bytes, so it is reused only when
        it was made, by the same ``version`` of the describing code, for the very
        files the manifest lists (same cache key, same SHA-256 of every file, same
        summary ``info``).
        """
        try:
            document = json.loads(self._description_path(manifest).read_bytes())
        except (FileNotFoundError, ValueError):
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
        self._write(self._description_path(manifest), json.dumps(document).encode("utf-8"))

    def uri(self, partition: str | None, name: str) -> str:
        """The path of a stored file as a string (for metadata and the report)."""
        return str(self.path(partition, name))

    # -- an image's own settings --------------------------------------------------------
    def _settings_path(self, partition: str) -> UPath:
        if not is_valid_partition_key(partition):
            raise StoreError(f"refusing partition key {partition!r}: not a kseg partition key")
        target = self.root / SETTINGS_FOLDER / f"{partition}.json"
        if self._real_root is not None and os.path.islink(target):
            self._check_inside(target)
        return target

    def own_settings(self, partition: str) -> bytes | None:
        """The raw document of an image's own settings, or None if it has none."""
        try:
            return self._settings_path(partition).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except IsADirectoryError as exc:
            raise StoreError(f"{partition}: its settings file is a directory") from exc

    def save_own_settings(self, partition: str, document: bytes | None) -> None:
        """Write (or, with None, remove) an image's own settings document, atomically."""
        target = self._settings_path(partition)
        if document is None:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
            return
        self._write(target, document)

    def partitions_with_own_settings(self) -> set[str]:
        """Partition keys that have a settings file (one listing of the folder)."""
        folder = self.root / SETTINGS_FOLDER
        try:
            names = [entry.name for entry in folder.iterdir()]
        except (FileNotFoundError, NotADirectoryError):
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
        that image. A ``trashed.json`` beside the files says what they were.

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
        folder = self.folder(partition)
        settings = self._settings_path(partition)
        with self.lock(partition, timeout=lock_timeout):
            if not folder.exists() and not settings.exists():
                return None
            stamp = when.strftime("%Y%m%dT%H%M%S%fZ")
            target = self.root / TRASH_FOLDER / f"{stamp}-{partition}"
            target.mkdir(parents=True, exist_ok=True)
            for source, name in ((folder, "outputs"), (settings, "settings.json")):
                if not source.exists():
                    continue
                if self.local:
                    os.rename(source, target / name)
                else:
                    source.fs.mv(source.path, (target / name).path, recursive=True)
            note = {
                "partition_key": partition,
                "source_path": source_path,
                "trashed_at": when.isoformat(timespec="seconds"),
                "reason": "the image was deleted from the incoming folder",
            }
            (target / "trashed.json").write_text(json.dumps(note, indent=1), encoding="utf-8")
        return str(target)


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

    def store(self) -> Store:
        """The output store under :attr:`store_root`."""
        return Store(self.store_root)

    def incoming(self) -> pathlib.Path:
        """The incoming folder as an absolute local path."""
        return pathlib.Path(self.incoming_dir).expanduser().absolute()

    def scan(self) -> Scan:
        """Scan the incoming folder (see :func:`assets.incoming.scan_incoming`)."""
        return scan_incoming(self.incoming())


def _env_or_default(name: str, default: str) -> str:
    # EnvVar has no default (dagster-io/dagster#16232): a set variable is passed as an
    # EnvVar, resolved when the resource is initialised; otherwise the project default.
    return dg.EnvVar(name) if name in os.environ else default


def default_storage() -> KsegStorage:
    """The resource the code location uses: environment variables, else the defaults."""
    max_bytes = (
        dg.EnvVar.int(MAX_FILE_ENV) if MAX_FILE_ENV in os.environ else DEFAULT_MAX_FILE_BYTES
    )
    return KsegStorage(
        incoming_dir=_env_or_default(INCOMING_ENV, DEFAULT_INCOMING),
        store_root=_env_or_default(STORE_ENV, DEFAULT_STORE),
        max_file_bytes=max_bytes,
    )
