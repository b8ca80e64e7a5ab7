"""The output store: atomic files, manifests, integrity, paths kept inside the root."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from assets.incoming import partition_key_for
from assets.storage import Manifest, Store, StoreError, parquet_bytes

KEY = partition_key_for("a.png")


def test_save_writes_files_then_a_manifest_that_verifies(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    manifest = store.save(
        KEY,
        "raw_image",
        cache_key="k1",
        code_version="1",
        files={"raw_image.png": b"png-bytes"},
        info={"width": 3},
        seconds=0.5,
    )
    folder = tmp_path / "store" / "images" / KEY
    assert (folder / "raw_image.png").read_bytes() == b"png-bytes"
    assert Manifest.from_json((folder / "raw_image.manifest.json").read_bytes()) == manifest
    assert manifest.files["raw_image.png"].bytes == 9
    assert store.intact(KEY, "raw_image", "k1") == manifest
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_a_changed_key_or_a_damaged_file_is_not_intact(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.save(KEY, "raw_image", cache_key="k1", code_version="1", files={"raw_image.png": b"x"})
    assert store.intact(KEY, "raw_image", "k2") is None
    (store.folder(KEY) / "raw_image.png").write_bytes(b"y")
    assert store.intact(KEY, "raw_image", "k1") is None
    (store.folder(KEY) / "raw_image.png").unlink()
    assert store.intact(KEY, "raw_image", "k1") is None
    assert store.intact(KEY, "chosen_k", "k1") is None


def test_an_unreadable_manifest_counts_as_absent(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.save(KEY, "raw_image", cache_key="k1", code_version="1", files={"raw_image.png": b"x"})
    (store.folder(KEY) / "raw_image.manifest.json").write_text("{not json")
    assert store.manifest(KEY, "raw_image") is None


@pytest.mark.parametrize("partition", ["../escape", "a/b", "", "UP"])
def test_invalid_partition_keys_are_refused(tmp_path: Path, partition: str) -> None:
    with pytest.raises(StoreError, match="refusing partition key"):
        Store(tmp_path).uri(partition, "x.png")


@pytest.mark.parametrize("name", ["../x.png", "a/b.png", ".hidden", "x..png", ""])
def test_invalid_file_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(StoreError, match="refusing file name"):
        Store(tmp_path).uri(KEY, name)


def test_a_linked_partition_folder_cannot_lead_outside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / "images").mkdir(parents=True)
    (root / "images" / KEY).symlink_to(tmp_path)
    with pytest.raises(StoreError, match="symbolic link"):
        Store(root).save(KEY, "raw_image", cache_key="k", code_version="1", files={"a.png": b"x"})
    assert not (tmp_path / "a.png").exists()


def test_a_linked_file_cannot_lead_outside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = Store(root)
    store.save(KEY, "chosen_k", cache_key="k", code_version="1", files={"chosen_k.json": b"{}"})
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    (root / "images" / KEY / "chosen_k.json").unlink()
    (root / "images" / KEY / "chosen_k.json").symlink_to(outside)
    with pytest.raises(StoreError, match="symbolic link"):
        store.read_bytes(KEY, "chosen_k.json")
    assert store.intact(KEY, "chosen_k", "k") is None  # a link is never a cache hit


@pytest.mark.parametrize("root", ["local", "memory://kseg-test-dropped"])
def test_a_file_a_new_step_version_no_longer_writes_is_removed(tmp_path: Path, root) -> None:
    """An upgrade that renames an output (region_boundaries.png became .jpg) leaves no
    orphan behind; a file another step's manifest lists is never removed."""
    store = Store(tmp_path / "store" if root == "local" else root)
    store.save(KEY, "chosen_k", cache_key="c", code_version="1", files={"shared.json": b"{}"})
    old = {"boundaries.png": b"old", "preview.jpg": b"p", "shared.json": b"{}"}
    store.save(KEY, "region_boundaries", cache_key="k1", code_version="1", files=old)
    new = {"boundaries.jpg": b"new", "preview.jpg": b"p2"}
    store.save(KEY, "region_boundaries", cache_key="k2", code_version="2", files=new)
    assert store.read_bytes(KEY, "boundaries.jpg") == b"new"
    with pytest.raises(StoreError, match="not in the store"):
        store.read_bytes(KEY, "boundaries.png")
    assert store.read_bytes(KEY, "shared.json") == b"{}"  # chosen_k's
    assert store.intact(KEY, "region_boundaries", "k2") is not None
    assert store.intact(KEY, "chosen_k", "c") is not None


def test_an_fsspec_root_works_like_a_folder() -> None:
    store = Store("memory://kseg-test-store")
    store.save(KEY, "chosen_k", cache_key="k", code_version="1", files={"chosen_k.json": b"{}"})
    assert store.read_bytes(KEY, "chosen_k.json") == b"{}"
    assert store.intact(KEY, "chosen_k", "k") is not None
    assert not store.local


def test_missing_files_raise_store_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not in the store"):
        Store(tmp_path).read_bytes(KEY, "raw_image.png")


def test_parquet_bytes_round_trip() -> None:
    table = pa.table({"a": [1, 2, 3]})
    assert pq.read_table(pa.BufferReader(parquet_bytes(table))).equals(table)


@pytest.mark.parametrize(
    "document",
    [
        b'{"manifest_version": 1, "files": []}',
        b'{"manifest_version": 1, "files": {"../x.png": {"sha256": "0", "bytes": 1}}}',
        b"[" * 5000 + b"]" * 5000,
        b'{"manifest_version": 1, "asset": 3}',
        b"\xff\xfe not utf-8",
    ],
)
def test_a_malformed_manifest_is_a_cache_miss_not_an_error(tmp_path: Path, document: bytes) -> None:
    store = Store(tmp_path)
    store.save(KEY, "raw_image", cache_key="k", code_version="1", files={"raw_image.png": b"x"})
    (store.folder(KEY) / "raw_image.manifest.json").write_bytes(document)
    assert store.manifest(KEY, "raw_image") is None
    assert store.intact(KEY, "raw_image", "k") is None


def test_a_manifest_that_is_a_folder_or_a_partition_folder_that_is_a_file(tmp_path: Path) -> None:
    store = Store(tmp_path)
    (tmp_path / "images" / KEY / "raw_image.manifest.json").mkdir(parents=True)
    assert store.manifest(KEY, "raw_image") is None
    other = "b-0123456789"
    (tmp_path / "images" / other).write_bytes(b"a file where a folder should be")
    assert store.manifest(other, "raw_image") is None
    with pytest.raises(StoreError, match="not a folder"):
        store.save(other, "raw_image", cache_key="k", code_version="1", files={"a.png": b"x"})


def test_a_fifo_in_a_stored_files_place_is_refused_without_hanging(tmp_path: Path) -> None:
    import os

    store = Store(tmp_path)
    store.save(KEY, "raw_image", cache_key="k", code_version="1", files={"raw_image.png": b"x"})
    (store.folder(KEY) / "raw_image.png").unlink()
    os.mkfifo(store.folder(KEY) / "raw_image.png")
    assert not store.verify(store.manifest(KEY, "raw_image"))
    with pytest.raises(StoreError, match="not a regular file"):
        store.read_bytes(KEY, "raw_image.png")


def test_a_folder_swapped_for_a_link_mid_run_gets_nothing_written_or_removed_outside(
    tmp_path: Path,
) -> None:
    root = tmp_path / "store"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ".victim.tmp").write_bytes(b"keep me")
    (outside / "raw_image.png").write_bytes(b"keep me too")
    store = Store(root)
    store.save(KEY, "raw_image", cache_key="k", code_version="1", files={"raw_image.png": b"x"})
    folder = root / "images" / KEY
    folder.rename(tmp_path / "moved")
    folder.symlink_to(outside)  # swapped after the first write
    with pytest.raises(StoreError, match="symbolic link"):
        store.save(KEY, "label_map", cache_key="k", code_version="1", files={"label_map.png": b"y"})
    with store.lock(KEY):  # the temporary-file cleanup must not reach through the link
        pass
    assert sorted(p.name for p in outside.iterdir()) == [".victim.tmp", "raw_image.png"]
    assert (outside / "raw_image.png").read_bytes() == b"keep me too"


def test_a_lock_file_replaced_by_a_link_truncates_nothing_outside(tmp_path: Path) -> None:
    root = tmp_path / "store"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (root / "locks").mkdir(parents=True)
    (root / "locks" / f"{KEY}.lock").symlink_to(victim)
    with pytest.raises(StoreError), Store(root).lock(KEY):
        pass
    assert victim.read_text() == "precious"
