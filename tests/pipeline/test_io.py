"""Tests of pipeline.io: atomic writes never leave half a file under the final name."""

from __future__ import annotations

import os
import stat

import pytest

from pipeline.io import atomic_write, atomic_write_bytes


def test_atomic_write_bytes_creates_parents_and_returns_size(tmp_path):
    path = tmp_path / "a" / "b" / "file.bin"
    assert atomic_write_bytes(path, b"hello") == 5
    assert path.read_bytes() == b"hello"
    assert [p.name for p in path.parent.iterdir()] == ["file.bin"]


@pytest.mark.parametrize("sync", [True, False])
def test_atomic_write_bytes_syncs_only_when_asked(tmp_path, monkeypatch, sync):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = tmp_path / "file.bin"
    assert atomic_write_bytes(path, b"data", sync=sync) == 4
    assert path.read_bytes() == b"data"
    assert len(synced) == (1 if sync else 0)
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_atomic_write_replaces_an_existing_file(tmp_path):
    path = tmp_path / "file.txt"
    path.write_text("old")
    atomic_write_bytes(path, b"new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "file.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_write(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_temporary_is_a_hidden_sibling(tmp_path):
    path = tmp_path / "out.parquet"
    with atomic_write(path) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".out.parquet.")
        tmp.write_bytes(b"x")
        assert not path.exists()
    assert path.read_bytes() == b"x"


def test_written_files_get_the_usual_permissions(tmp_path):
    """Outputs are shared files: readable by others under the usual umask (not 0600)."""
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "f.bin", b"data")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "f.bin").stat().st_mode)
    assert mode == 0o644
