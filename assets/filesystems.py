"""How the store touches files: a local tree that never follows a link, and fsspec URLs.

Every operation names a file by folder parts below the store's root and a file name
(already checked against a strict alphabet by :mod:`assets.storage`).

:class:`LocalTree` walks from the root one folder at a time with directory file
descriptors opened ``O_NOFOLLOW``, and opens, creates, renames and removes files
relative to them (``dir_fd``), also ``O_NOFOLLOW``. A symbolic link planted anywhere
below the root, before or during a run, makes the operation fail instead of reaching
outside: nothing outside the root is ever written, read or removed, whatever is
swapped when (the check is the system call itself, not an earlier look). A FIFO or
device put in a stored file's place is refused too (opened without blocking, then
checked to be a regular file). The root itself is resolved once.

:class:`RemoteTree` does the same operations through universal-pathlib for fsspec
URLs (``s3://``, ``memory://``, ...), where there are no links to follow. On an object
store a PUT is atomic (an object, even a multipart upload, is visible only once
complete), so files are written under their own name in one request; other fsspec
file systems get a temporary name and a rename, as local folders do. Listings and
sizes are always asked of the server: fsspec caches listings in a long-lived process
(the daemon's code server) for ever, and objects other processes wrote would stay
unseen.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
import uuid
from collections.abc import Iterator, Sequence

from upath import UPath

from pipeline.errors import KsegError

__all__ = ["ATOMIC_PUT_PROTOCOLS", "FileTreeError", "LocalTree", "RemoteTree", "fresh"]

#: fsspec protocols whose writes become visible whole or not at all (object stores).
ATOMIC_PUT_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"})

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20


class FileTreeError(KsegError):
    """A store path that is a link, not a folder, or not a regular file."""


def _refused(where: str, name: str, dir_fd: int) -> FileTreeError:
    try:
        is_link = stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        is_link = False
    if is_link:
        return FileTreeError(f"refusing {where}: it is a symbolic link (links are never followed)")
    return FileTreeError(f"refusing {where}: it is not a folder")


class LocalTree:
    """Files below a local root, reached without following any link.

    Parameters
    ----------
    root : str
        Absolute path of the root (resolved once; created on the first write).
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)

    def where(self, parts: Sequence[str], name: str | None = None) -> str:
        """The path, for messages and metadata."""
        return os.path.join(self.root, *parts, *([name] if name else []))

    @contextlib.contextmanager
    def folder(self, parts: Sequence[str], *, create: bool = False) -> Iterator[int]:
        """A descriptor of the folder ``parts`` below the root.

        Raises
        ------
        FileNotFoundError
            If it does not exist (and ``create`` is false).
        FileTreeError
            If a part is a symbolic link or not a folder.
        """
        if create:
            os.makedirs(self.root, exist_ok=True)
        fd = os.open(self.root, _DIR)
        try:
            for depth, part in enumerate(parts):
                try:
                    child = os.open(part, _DIR, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o777, dir_fd=fd)
                    child = os.open(part, _DIR, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                        raise _refused(self.where(parts[: depth + 1]), part, fd) from exc
                    raise
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def open(self, parts: Sequence[str], name: str):
        """Open a regular file for reading (binary stream).

        Raises
        ------
        FileNotFoundError
        FileTreeError
            If it is a link, a folder or not a regular file.
        """
        with self.folder(parts) as folder:
            try:
                fd = os.open(name, _READ, dir_fd=folder)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.EMLINK):
                    raise _refused(self.where(parts, name), name, folder) from exc
                if exc.errno == errno.EISDIR:
                    raise FileTreeError(f"refusing {self.where(parts, name)}: a folder") from exc
                raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise FileTreeError(f"refusing {self.where(parts, name)}: not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")

    def read(self, parts: Sequence[str], name: str) -> bytes:
        """A regular file's content."""
        with self.open(parts, name) as stream:
            return stream.read()

    def size(self, parts: Sequence[str], name: str) -> int | None:
        """A regular file's size, or None if it is missing or not a regular file."""
        try:
            with self.folder(parts) as folder:
                info = os.stat(name, dir_fd=folder, follow_symlinks=False)
        except (FileNotFoundError, FileTreeError):
            return None
        return info.st_size if stat.S_ISREG(info.st_mode) else None

    def write(self, parts: Sequence[str], name: str, data: bytes) -> None:
        """Write a file atomically: a fresh temporary name, then a rename over ``name``.

        No ``fsync``: a reader never sees half a file, and the store's SHA-256 check
        catches a file a power cut tore.
        """
        with self.folder(parts, create=True) as folder:
            temporary = f".{name}.{uuid.uuid4().hex}.tmp"
            try:
                fd = os.open(temporary, _CREATE, 0o666, dir_fd=folder)
                try:
                    with os.fdopen(fd, "wb") as stream:
                        stream.write(data)
                    os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
                except BaseException:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(temporary, dir_fd=folder)
                    raise
            except IsADirectoryError as exc:
                where = self.where(parts, name)
                raise FileTreeError(f"refusing {where}: a folder is in its place") from exc
            except OSError as exc:  # disk full, read-only ...: name the file, not the temporary
                raise OSError(exc.errno, exc.strerror, self.where(parts, name)) from exc

    def remove(self, parts: Sequence[str], name: str) -> None:
        """Remove a file (a link is removed itself, never its target); missing is fine."""
        with contextlib.suppress(FileNotFoundError), self.folder(parts) as folder:
            os.unlink(name, dir_fd=folder)

    def names(self, parts: Sequence[str]) -> list[str]:
        """The entries of a folder (empty if it does not exist)."""
        try:
            with self.folder(parts) as folder:
                return os.listdir(folder)
        except FileNotFoundError:
            return []

    def exists(self, parts: Sequence[str], name: str) -> bool:
        """True if the entry ``name`` exists (whatever it is; never followed)."""
        try:
            with self.folder(parts) as folder:
                os.stat(name, dir_fd=folder, follow_symlinks=False)
        except (FileNotFoundError, FileTreeError):
            return False
        return True

    def remove_temporaries(self, parts: Sequence[str]) -> None:
        """Remove the temporary files a killed writer left in a folder."""
        with contextlib.suppress(FileNotFoundError), self.folder(parts) as folder:
            for name in os.listdir(folder):
                if name.startswith(".") and name.endswith(".tmp"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=folder)

    def move(self, parts: Sequence[str], name: str, to_parts: Sequence[str], to_name: str) -> None:
        """Rename an entry (a file, a folder or a link itself) to another folder."""
        with self.folder(parts) as source, self.folder(to_parts, create=True) as target:
            os.rename(name, to_name, src_dir_fd=source, dst_dir_fd=target)

    @contextlib.contextmanager
    def lock(self, parts: Sequence[str], name: str, timeout: float) -> Iterator[None]:
        """Hold an exclusive ``flock`` on a lock file for the block.

        Raises
        ------
        TimeoutError
            If another holder keeps it for ``timeout`` seconds.
        """
        with self.folder(parts, create=True) as folder:
            try:
                fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666,
                             dir_fd=folder)  # fmt: skip
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.EMLINK):
                    raise _refused(self.where(parts, name), name, folder) from exc
                raise
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise TimeoutError(name) from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # releases the lock


def fresh(path: UPath) -> UPath:
    """``path``, with fsspec's cached listings of it (and its folder) dropped."""
    path.fs.invalidate_cache(path.path)
    return path


class RemoteTree:
    """Files below an fsspec URL (no links exist there)."""

    def __init__(self, root: UPath) -> None:
        self.root = root
        protocols = root.fs.protocol
        protocols = (protocols,) if isinstance(protocols, str) else tuple(protocols)
        self.atomic_put = bool(ATOMIC_PUT_PROTOCOLS.intersection(protocols))

    def _path(self, parts: Sequence[str], name: str | None = None) -> UPath:
        path = self.root
        for part in (*parts, *([name] if name else [])):
            path = path / part
        return path

    def where(self, parts: Sequence[str], name: str | None = None) -> str:
        return str(self._path(parts, name))

    def open(self, parts: Sequence[str], name: str):
        return self._path(parts, name).open("rb")

    def read(self, parts: Sequence[str], name: str) -> bytes:
        return self._path(parts, name).read_bytes()

    def size(self, parts: Sequence[str], name: str) -> int | None:
        try:
            return int(fresh(self._path(parts, name)).stat().st_size)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def write(self, parts: Sequence[str], name: str, data: bytes) -> None:
        target = self._path(parts, name)
        if self.atomic_put:  # one PUT: readers see the old object or the new, whole
            target.write_bytes(data)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{name}.{uuid.uuid4().hex}.tmp")
        try:
            temporary.write_bytes(data)
            temporary.rename(target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            raise

    def remove(self, parts: Sequence[str], name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(parts, name).unlink()

    def names(self, parts: Sequence[str]) -> list[str]:
        try:
            return [entry.name for entry in fresh(self._path(parts)).iterdir()]
        except (FileNotFoundError, NotADirectoryError):
            return []

    def exists(self, parts: Sequence[str], name: str) -> bool:
        return fresh(self._path(parts, name)).exists()

    def remove_temporaries(self, parts: Sequence[str]) -> None:
        for name in self.names(parts):
            if name.startswith(".") and name.endswith(".tmp"):
                self.remove(parts, name)

    def move(self, parts: Sequence[str], name: str, to_parts: Sequence[str], to_name: str) -> None:
        source, target = fresh(self._path(parts, name)), self._path(to_parts, to_name)
        target.parent.mkdir(parents=True, exist_ok=True)
        source.fs.mv(source.path, target.path, recursive=True)
        fresh(source)

    @contextlib.contextmanager
    def lock(self, parts: Sequence[str], name: str, timeout: float) -> Iterator[None]:
        # An object store has no locks; atomic renames and the SHA-256 check on every
        # reuse mean a mix of two runs' files is recomputed, never trusted.
        yield
