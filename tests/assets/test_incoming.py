"""Partition keys and the incoming-folder scan."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from assets.incoming import (
    KEY_PATTERN,
    is_valid_partition_key,
    partition_key_for,
    resolve_source,
    scan_incoming,
)

UNSAFE = set(",[]|/\\\"' \t\n")


@pytest.mark.parametrize(
    "relpath",
    [
        "a.png",
        "cats/Tabby 1.JPG",
        "x,y[1]|z.png",
        'quote\'s "name".tif',
        "猫/写真.png",
        "deep/" * 30 + "long-name.webp",
        "UPPER.PNG",
    ],
)
def test_keys_use_a_safe_alphabet_and_are_stable(relpath: str) -> None:
    key = partition_key_for(relpath)
    assert KEY_PATTERN.fullmatch(key)
    assert not set(key) & UNSAFE
    assert len(key) <= 64
    assert partition_key_for(relpath) == key
    assert is_valid_partition_key(key)


def test_keys_show_the_path_and_differ_for_near_identical_paths() -> None:
    assert partition_key_for("cats/Tabby 1.JPG").startswith("cats-tabby-1-jpg-")
    keys = {
        partition_key_for(p) for p in ("a.png", "A.png", "a.PNG", "a_.png", "a-.png", "b/a.png")
    }
    assert len(keys) == 6


def test_os_separator_and_dot_segments_normalise_to_the_same_key() -> None:
    assert partition_key_for("cats/a.png") == partition_key_for(f"cats{os.sep}a.png")
    assert partition_key_for("./cats//a.png") == partition_key_for("cats/a.png")


@pytest.mark.parametrize("relpath", ["", "/etc/passwd", "../x.png", "a/../../x.png"])
def test_paths_outside_the_folder_have_no_key(relpath: str) -> None:
    with pytest.raises(ValueError, match="incoming folder"):
        partition_key_for(relpath)


@pytest.mark.parametrize("key", ["../x", "a/b", "", "A-b", "-a", "a,b", "a b", None, 3])
def test_invalid_keys_are_recognised(key: object) -> None:
    assert not is_valid_partition_key(key)


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_scan_finds_images_in_subfolders_and_skips_hidden_and_temporary(tmp_path: Path) -> None:
    root = tmp_path / "in"
    for rel in ("a.png", "sub/b.JPG", "sub/deeper/c.tiff", "d.webp"):
        _touch(root / rel)
    for rel in (
        ".hidden.png",
        ".cache/e.png",
        "f.png.part",
        "g.png~",
        "h.tmp",
        "notes.txt",
        "~lock.png",
        "x.png.crdownload",
    ):
        _touch(root / rel)
    scan = scan_incoming(root)
    assert [i.relpath for i in scan.images] == ["a.png", "d.webp", "sub/b.JPG", "sub/deeper/c.tiff"]
    assert scan.refused == ()
    assert scan.by_key()[partition_key_for("sub/b.JPG")].path == root / "sub" / "b.JPG"


def test_scan_refuses_links_leaving_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "in"
    outside = _touch(tmp_path / "secret.png")
    _touch(root / "real.png")
    (root / "inside-link.png").symlink_to(root / "real.png")
    (root / "escape.png").symlink_to(outside)
    (root / "dangling.png").symlink_to(root / "missing.png")
    (root / "linked-dir").symlink_to(tmp_path)
    scan = scan_incoming(root)
    assert [i.relpath for i in scan.images] == ["inside-link.png", "real.png"]
    reasons = {r.relpath: r.reason for r in scan.refused}
    assert reasons["escape.png"] == "symbolic link leads outside the incoming folder"
    assert reasons["linked-dir"] == "linked folder leads outside the incoming folder"
    assert "dangling.png" in reasons


def test_scan_of_a_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_incoming(tmp_path / "nope")


def test_resolve_source_refuses_escapes(tmp_path: Path) -> None:
    root = tmp_path / "in"
    _touch(root / "a.png")
    (root / "out.png").symlink_to(_touch(tmp_path / "secret.png"))
    assert resolve_source(root, "a.png") == root / "a.png"
    for bad in ("../secret.png", "/etc/passwd", "out.png"):
        with pytest.raises(ValueError):
            resolve_source(root, bad)


def test_an_object_store_incoming_folder_is_scanned_looked_at_and_read(tmp_path: Path) -> None:
    import io

    from PIL import Image
    from upath import UPath

    from assets.incoming import look, read_source, scan_incoming, sha256_file

    root = UPath("memory://kseg-incoming-test")
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), (10, 20, 30)).save(buffer, "PNG")
    (root / "cats").mkdir(parents=True, exist_ok=True)
    (root / "cats" / "a.png").write_bytes(buffer.getvalue())
    (root / "notes.txt").write_bytes(b"x")
    (root / "b.png.part").write_bytes(b"half an upload")
    (root / ".hidden" / "c.png").parent.mkdir(parents=True, exist_ok=True)
    (root / ".hidden" / "c.png").write_bytes(b"x")
    scan = scan_incoming(root)
    assert [image.relpath for image in scan.images] == ["cats/a.png"]
    assert scan.unsupported == ("notes.txt",)
    image = scan.images[0]
    seen = look(image.path)
    assert seen.size == len(buffer.getvalue())
    data, read = read_source(root, "cats/a.png", max_bytes=10_000)
    assert data == buffer.getvalue() and read == seen
    import hashlib

    assert sha256_file(image.path) == hashlib.sha256(data).hexdigest()
    with pytest.raises(ValueError, match="above the limit"):
        read_source(root, "cats/a.png", max_bytes=10)
    root.fs.rm(root.path, recursive=True)
