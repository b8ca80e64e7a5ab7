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
    store.path(KEY, "raw_image.png").write_bytes(b"y")
    assert store.intact(KEY, "raw_image", "k1") is None
    store.path(KEY, "raw_image.png").unlink()
    assert store.intact(KEY, "raw_image", "k1") is None
    assert store.intact(KEY, "chosen_k", "k1") is None


def test_an_unreadable_manifest_counts_as_absent(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.save(KEY, "raw_image", cache_key="k1", code_version="1", files={"raw_image.png": b"x"})
    store.path(KEY, "raw_image.manifest.json").write_text("{not json")
    assert store.manifest(KEY, "raw_image") is None


@pytest.mark.parametrize("partition", ["../escape", "a/b", "", "UP"])
def test_invalid_partition_keys_are_refused(tmp_path: Path, partition: str) -> None:
    with pytest.raises(StoreError, match="refusing partition key"):
        Store(tmp_path).path(partition, "x.png")


@pytest.mark.parametrize("name", ["../x.png", "a/b.png", ".hidden", "x..png", ""])
def test_invalid_file_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(StoreError, match="refusing file name"):
        Store(tmp_path).path(KEY, name)


def test_a_linked_partition_folder_cannot_lead_outside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / "images").mkdir(parents=True)
    (root / "images" / KEY).symlink_to(tmp_path)
    with pytest.raises(StoreError, match="outside"):
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
    with pytest.raises(StoreError, match="outside"):
        store.read_bytes(KEY, "chosen_k.json")  # the folder was checked already: one lstat


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
