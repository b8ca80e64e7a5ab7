"""The incoming folder: which files are images, and the partition key of each.

Partition keys
--------------
A key is derived from the file's path relative to the incoming folder (``/``
separators):

1. the *slug*: the path (Unicode NFC) in lower case, every run of characters outside
   ``a-z0-9`` replaced by one ``-``, trimmed of ``-`` and cut to 48 characters
   (``image`` if nothing is left);
2. the *tag*: the first 10 hex digits of the SHA-256 of the exact relative path (its
   bytes on disk), so two files whose names differ only in Unicode normalisation
   (``café`` composed and decomposed) get different keys;
3. the key is ``<slug>-<tag>``, e.g. ``cats/Tabby 1.JPG`` -> ``cats-tabby-1-jpg-<tag>``.

So a key uses only ``a-z``, ``0-9`` and ``-`` (none of the characters that break
Dagster's UI, such as ``,`` ``[`` ``]`` ``|`` ``/``, whitespace or quotes), is
stable for a given path, differs for paths that differ only in case or
punctuation (the tag hashes the exact path), and is safe as a folder name. The
original path is kept in the ``raw_image`` metadata and the report. Moving or
renaming a file gives it a new key.

Scanning
--------
:func:`scan_incoming` walks the folder and its subfolders, keeps files whose
extension is in :data:`pipeline.images.SUPPORTED_EXTENSIONS` (any case), and skips
dot-files, dot-folders and temporary files (``~``, ``.tmp``, ``.part``, ...).
Symbolic links to files inside the folder are used; links that lead outside it
are refused (reported, never read). Linked folders are not followed. Names that
are not valid UTF-8 are refused (they cannot be shown or stored as text).

The incoming folder may also be an fsspec URL (``s3://bucket/incoming``): the same
rules apply to the objects under it (there are no links there). A file's *look*
(:class:`Look`) is what tells whether it may have changed without reading it: its size
and modification time locally, its size and ETag on an object store (an object is
visible only once its upload completed, and an upload in progress under another name
is skipped as temporary).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import stat
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from upath import UPath

from pipeline.images import SUPPORTED_EXTENSIONS

__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "KEY_PATTERN",
    "NOT_A_FILE",
    "IncomingImage",
    "Refused",
    "Scan",
    "is_valid_partition_key",
    "not_a_file",
    "partition_key_for",
    "read_source",
    "resolve_source",
    "scan_incoming",
    "sha256_file",
    "too_large",
]

#: Largest image file read (bytes); larger files are refused before reading.
DEFAULT_MAX_FILE_BYTES = 1 << 30
#: Why a FIFO, a device or a socket named like an image is never read.
NOT_A_FILE = "not a regular file (a device, a FIFO or a socket)"

#: Every key made by :func:`partition_key_for` matches this.
KEY_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")

_SLUG_MAX = 48
_TAG_HEX = 10
_TEMP_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".crdownload", ".download", ".swp")


def _clean(relpath: str) -> str:
    """``/`` separators, no empty or ``.`` segments; the characters left as they are."""
    return "/".join(p for p in relpath.replace(os.sep, "/").split("/") if p not in ("", "."))


def _normalise(relpath: str) -> str:
    return unicodedata.normalize("NFC", _clean(relpath))


def _printable(relpath: str) -> str:
    """``relpath`` with bytes that are not UTF-8 (lone surrogates) shown as U+FFFD."""
    return relpath.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def partition_key_for(relpath: str) -> str:
    """The partition key of a file, from its path relative to the incoming folder.

    Parameters
    ----------
    relpath : str
        Relative path with ``/`` (or the OS separator) between folders.

    Returns
    -------
    str
        ``<slug>-<tag>``; see the module docstring.

    Raises
    ------
    ValueError
        If ``relpath`` is empty, absolute or contains ``..``.
    """
    if not relpath or relpath.startswith(("/", os.sep)) or os.path.isabs(relpath):
        raise ValueError(f"expected a path relative to the incoming folder, got {relpath!r}")
    norm = _normalise(relpath)
    if not norm or ".." in norm.split("/"):
        raise ValueError(f"expected a path inside the incoming folder, got {relpath!r}")
    slug = re.sub(r"[^a-z0-9]+", "-", norm.lower()).strip("-")[:_SLUG_MAX].strip("-")
    exact = _clean(relpath).encode("utf-8", "surrogateescape")  # the name's bytes on disk
    tag = hashlib.sha256(exact).hexdigest()[:_TAG_HEX]
    return f"{slug or 'image'}-{tag}"


def is_valid_partition_key(key: object) -> bool:
    """True if ``key`` has the shape of a key made by :func:`partition_key_for`."""
    return isinstance(key, str) and KEY_PATTERN.fullmatch(key) is not None


@dataclass(frozen=True)
class IncomingImage:
    """An image file found in the incoming folder.

    Attributes
    ----------
    key : str
        Its partition key.
    relpath : str
        Path relative to the incoming folder, ``/``-separated.
    path : pathlib.Path
        Absolute path (possibly a link to a file inside the folder).
    """

    key: str
    relpath: str
    path: Path | UPath


@dataclass(frozen=True)
class Refused:
    """A file that looked like an image but will not be read, and why."""

    relpath: str
    reason: str


@dataclass(frozen=True)
class Scan:
    """Result of :func:`scan_incoming`.

    Attributes
    ----------
    root : pathlib.Path or UPath
        The incoming folder, absolute (or its URL).
    images : tuple of IncomingImage
        Sorted by relative path.
    refused : tuple of Refused
    unsupported : tuple of str
        Files that are neither images nor temporary names (sorted relative paths).
    """

    root: Path | UPath
    images: tuple[IncomingImage, ...]
    refused: tuple[Refused, ...]
    unsupported: tuple[str, ...] = ()

    def by_key(self) -> dict[str, IncomingImage]:
        """The images indexed by partition key."""
        return {image.key: image for image in self.images}


def _is_temporary(name: str) -> bool:
    lower = name.lower()
    return name.startswith((".", "~")) or lower.endswith(("~", *_TEMP_SUFFIXES))


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def scan_incoming(root: str | os.PathLike[str]) -> Scan:
    """Find the images of an incoming folder and their partition keys.

    Parameters
    ----------
    root : str or os.PathLike
        The incoming folder (a local path).

    Returns
    -------
    Scan

    Raises
    ------
    FileNotFoundError
        If ``root`` is not an existing folder.
    """
    if is_remote(root):
        return _scan_remote(UPath(root))
    base = Path(root).expanduser().absolute()
    if not base.is_dir():
        raise FileNotFoundError(f"incoming folder {str(base)!r} does not exist")
    real_root = os.path.realpath(base)
    images: dict[str, IncomingImage] = {}
    refused: list[Refused] = []
    unsupported: list[str] = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        rel_dir = os.path.relpath(dirpath, base)
        kept = []
        for name in sorted(dirnames):
            full = os.path.join(dirpath, name)
            if name.startswith("."):
                continue
            if os.path.islink(full):
                if not _inside(os.path.realpath(full), real_root):
                    rel = _printable(_clean(os.path.join(rel_dir, name)))
                    refused.append(Refused(rel, "linked folder leads outside the incoming folder"))
                continue
            kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            if _is_temporary(name):
                continue
            full = os.path.join(dirpath, name)
            rel = _clean(os.path.join(rel_dir, name))
            if os.path.splitext(name)[1].lower() not in SUPPORTED_EXTENSIONS:
                unsupported.append(_printable(rel))
                continue
            if _printable(rel) != rel:
                refused.append(Refused(_printable(rel), "file name is not valid UTF-8"))
                continue
            if os.path.islink(full):
                target = os.path.realpath(full)
                if not _inside(target, real_root):
                    refused.append(Refused(rel, "symbolic link leads outside the incoming folder"))
                    continue
                if not os.path.isfile(target):
                    refused.append(Refused(rel, "symbolic link does not lead to a file"))
                    continue
            key = partition_key_for(rel)
            if key in images:
                other = images[key].relpath
                refused.append(Refused(rel, f"partition key {key} already used by {other}"))
                continue
            images[key] = IncomingImage(key=key, relpath=rel, path=Path(full))
    ordered = tuple(sorted(images.values(), key=lambda image: image.relpath))
    return Scan(
        root=base,
        images=ordered,
        refused=tuple(sorted(refused, key=lambda r: r.relpath)),
        unsupported=tuple(sorted(unsupported)),
    )


def resolve_source(root: str | os.PathLike[str], relpath: str) -> Path:
    """The absolute path of ``relpath`` inside ``root``, refusing anything that leaves it.

    Raises
    ------
    ValueError
        If the path (after following links) is outside ``root``.
    """
    base = Path(root).expanduser().absolute()
    norm = _clean(relpath)  # not NFC: the name must stay the one on disk
    if not norm or ".." in norm.split("/") or os.path.isabs(relpath):
        raise ValueError(f"{relpath!r} is not a path inside the incoming folder")
    path = base / norm
    if not _inside(os.path.realpath(path), os.path.realpath(base)):
        raise ValueError(f"{relpath!r} leads outside the incoming folder")
    return path


def read_source(
    root: str | os.PathLike[str], relpath: str, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES
) -> tuple[bytes, Look]:
    """Read an image file of the incoming folder: a regular file, of bounded size.

    The file is opened without blocking (a FIFO put in an image's place does not hang
    the reader), checked on the open descriptor to be a regular file no larger than
    ``max_bytes``, and read to at most that many bytes (a file growing while it is
    read is refused, not read without bound).

    Returns
    -------
    data : bytes
    look : Look
        The file's size and stamp when it was opened.

    Raises
    ------
    ValueError
        If the path leaves the folder, is not a regular file, or is too large.
    OSError
        If it cannot be opened or read.
    """
    if is_remote(root):
        return _read_remote(UPath(root), relpath, max_bytes)
    path = resolve_source(root, relpath)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(NOT_A_FILE)
        refused = too_large(info.st_size, max_bytes)
        if refused:
            raise ValueError(refused)
        os.set_blocking(fd, True)
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 22, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise ValueError(f"file grew above the limit of {max_bytes} bytes while read")
        return b"".join(chunks), Look(info.st_size, str(info.st_mtime_ns), info.st_mtime)
    finally:
        os.close(fd)


def _read_remote(root: UPath, relpath: str, max_bytes: int) -> tuple[bytes, Look]:
    norm = _clean(relpath)
    if not norm or ".." in norm.split("/"):
        raise ValueError(f"{relpath!r} is not a path inside the incoming folder")
    path = root / norm
    info = path.fs.info(path.path)
    seen = _remote_look(info)
    refused = too_large(seen.size, max_bytes)
    if refused:
        raise ValueError(refused)
    with path.open("rb") as stream:
        data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"file grew above the limit of {max_bytes} bytes while read")
    return data, seen


def is_remote(root: str | os.PathLike[str]) -> bool:
    """True if ``root`` is an fsspec URL (an object store), not a local folder."""
    return not isinstance(UPath(root), pathlib.Path)


def _scan_remote(root: UPath) -> Scan:
    root.fs.invalidate_cache(root.path)  # a cached listing would hide new objects for ever
    if not root.exists():
        raise FileNotFoundError(f"incoming folder {str(root)!r} does not exist")
    prefix = root.path.rstrip("/") + "/"
    entries = root.fs.find(root.path, detail=True)
    images: dict[str, IncomingImage] = {}
    refused: list[Refused] = []
    unsupported: list[str] = []
    for full in sorted(entries):
        if entries[full].get("type") == "directory" or not full.startswith(prefix):
            continue
        rel = _clean(full[len(prefix) :])
        parts = rel.split("/")
        if any(part.startswith(".") for part in parts[:-1]) or _is_temporary(parts[-1]):
            continue
        if os.path.splitext(parts[-1])[1].lower() not in SUPPORTED_EXTENSIONS:
            unsupported.append(rel)
            continue
        key = partition_key_for(rel)
        if key in images:
            other = images[key].relpath
            refused.append(Refused(rel, f"partition key {key} already used by {other}"))
            continue
        images[key] = IncomingImage(key=key, relpath=rel, path=root / rel)
    ordered = tuple(sorted(images.values(), key=lambda image: image.relpath))
    return Scan(root, ordered, tuple(refused), tuple(sorted(unsupported)))


@dataclass(frozen=True)
class Look:
    """What tells whether a file may have changed, without reading it.

    Attributes
    ----------
    size : int
    stamp : str
        Its modification time in nanoseconds (local), or its ETag (object store).
    modified : float
        POSIX time of its last modification (for the settle delay).
    """

    size: int
    stamp: str
    modified: float


def _remote_look(info: dict[str, Any]) -> Look:
    modified = info.get("LastModified") or info.get("mtime") or info.get("created") or 0
    if isinstance(modified, datetime):
        modified = modified.timestamp()
    stamp = str(info.get("ETag") or info.get("etag") or modified).strip('"')
    return Look(int(info.get("size") or 0), stamp, float(modified))


def look(path: Path | UPath) -> Look | None:
    """The look of an image file; None if it is gone or not a regular file.

    Raises
    ------
    OSError
        If it exists but cannot be examined.
    """
    if isinstance(path, UPath) and not isinstance(path, pathlib.Path):
        try:
            path.fs.invalidate_cache(path.path)  # ask the server, not a cached listing
            info = path.fs.info(path.path)
        except FileNotFoundError:
            return None
        return None if info.get("type") == "directory" else _remote_look(info)
    try:
        info = os.stat(path)  # follows a link (the scan keeps only links inside the folder)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return Look(info.st_size, str(info.st_mtime_ns), info.st_mtime)


def not_a_file(path: Path | UPath) -> str | None:
    """Why something the scan listed is no image file (a FIFO, a device, a socket), or
    None if it is a regular file or gone."""
    if isinstance(path, UPath) and not isinstance(path, pathlib.Path):
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    return None if stat.S_ISREG(info.st_mode) else NOT_A_FILE


def too_large(size: int, max_bytes: int) -> str | None:
    """Why a file of ``size`` bytes is not read, or None if it is within ``max_bytes``."""
    if size <= max_bytes:
        return None
    return f"file has {size} bytes, above the limit of {max_bytes} (KSEG_MAX_FILE_BYTES)"


def _hash_stream(stream: Any, digest: Any, max_bytes: int | None) -> None:
    total = 0
    for chunk in iter(lambda: stream.read(1 << 20), b""):
        digest.update(chunk)
        total += len(chunk)
        if max_bytes is not None and total > max_bytes:
            raise ValueError(f"file grew above the limit of {max_bytes} bytes while read")


def sha256_file(path: Path | UPath, *, max_bytes: int | None = None) -> str:
    """SHA-256 of a file (locally opened without blocking: a FIFO raises, never hangs).

    Raises
    ------
    OSError
        If it cannot be read, or is not a regular file.
    ValueError
        If more than ``max_bytes`` bytes are read (a file growing while it is read).
    """
    digest = hashlib.sha256()
    if isinstance(path, UPath) and not isinstance(path, pathlib.Path):
        with path.open("rb") as stream:
            _hash_stream(stream, digest, max_bytes)
        return digest.hexdigest()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as stream:
        if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            raise OSError(f"{path} is not a regular file")
        _hash_stream(stream, digest, max_bytes)
    return digest.hexdigest()
