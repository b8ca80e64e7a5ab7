"""Atomic file writes: a reader never sees half a file."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_bytes"]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success.

    The caller writes the temporary file (it does not exist yet). It lives in the
    same directory (so the final ``os.replace`` is atomic on POSIX) under a
    dot-name that scanners ignore. On any exception it is
    removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A fresh unique name that the writer creates itself, so the file gets the usual
    # permissions (mkstemp would make it 0600).
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, sync: bool = True) -> int:
    """Write ``data`` to ``path`` atomically and return its size in bytes.

    With ``sync`` (the default) the data is flushed to disk (``fsync``) before the
    rename, so the new file survives a power cut too. Without it the write is still
    atomic for every reader and survives a crash of the writing process; a power
    cut may leave the old file, no file or a torn one, so only callers that verify
    what they read back (the output store checks every file's SHA-256) should skip
    it. An ``fsync`` costs about 0.5 ms here, several times the write itself.
    """
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        if sync:
            fh.flush()
            os.fsync(fh.fileno())
    return len(data)
