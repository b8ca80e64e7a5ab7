"""Helpers of the robustness tests: child processes, file modes, folder snapshots."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def child_env(**extra: str) -> dict[str, str]:
    """Environment of a child Python: the project importable, warnings as errors (strict,
    like the suite), no KSEG_/DAGSTER_ variables from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "KSEG_"))}
    env.update(PYTHONPATH=str(ROOT), PYTHONWARNINGS="error", **extra)
    return env


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def without_file_permission_override() -> list[str] | None:
    """A command prefix under which file modes are enforced, or None if there is none.

    As root, ``setpriv`` drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (from the
    bounding and inheritable sets, so the executed program never regains them): the
    child stays uid 0 (it can still use root's files) but a ``chmod 000`` file is
    really unreadable. A non-root user needs no prefix.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    drop = "-dac_override,-dac_read_search"
    return [setpriv, "--bounding-set", drop, "--inh-caps", drop, "--"]


def tree_snapshot(root: Path, *, skip: tuple[Path, ...] = ()) -> dict[str, tuple[str, int]]:
    """Relative path -> (sha256 or 'dir'/'link'/kind, mtime_ns) of everything under ``root``
    but ``skip``; never opening a FIFO or a device, nor reading a huge (sparse) file whole."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for name in dirnames + filenames:
            path = here / name
            if path in skip:
                continue
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                kind = "link:" + os.readlink(path)
            elif stat.S_ISDIR(st.st_mode):
                kind = "dir"
            elif not stat.S_ISREG(st.st_mode) or st.st_size > 1 << 26:
                kind = f"mode {stat.S_IFMT(st.st_mode):o}, {st.st_size} bytes"
            else:
                try:
                    kind = hashlib.sha256(path.read_bytes()).hexdigest()
                except PermissionError:
                    kind = "unreadable"
            found[str(path.relative_to(root))] = (kind, st.st_mtime_ns)
    return found
