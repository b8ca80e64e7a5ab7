"""``Store.lock``: one run at a time per image, never left behind by a killed holder."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from robustness_util import ROOT, child_env, python

from assets.incoming import partition_key_for
from assets.storage import Store, StoreError

KEY = partition_key_for("photo.png")


@contextmanager
def _held_by_a_child(root: Path) -> Iterator[None]:
    """``KEY``'s lock in ``root`` held by a child process, killed (SIGKILL) on exit."""
    code = (
        "import sys, time\n"
        "from assets.storage import Store\n"
        f"with Store({str(root)!r}).lock({KEY!r}):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(600)\n"
    )
    holder = subprocess.Popen(python("-c", code), cwd=ROOT, env=child_env(), stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        yield
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()


def test_the_lock_of_a_killed_holder_is_released(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    with _held_by_a_child(tmp_path / "store"):
        refused = pytest.raises(StoreError, match=f"^{KEY}: another run kept this image locked")
        with refused, store.lock(KEY, timeout=0.3):
            pass
    started = time.monotonic()
    with store.lock(KEY, timeout=5):
        assert time.monotonic() - started < 1
    assert not (tmp_path / "store" / "images").exists()  # a lock writes no output


def test_a_killed_writers_temporary_files_are_removed_once_the_lock_is_held(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "store")
    store.save(KEY, "raw_image", cache_key="k", code_version="1", files={"raw_image.png": b"x"})
    folder = tmp_path / "store" / "images" / KEY
    leftover = folder / ".label_map.png.0123abcd.tmp"
    leftover.write_bytes(b"half a fi")
    with store.lock(KEY):
        assert not leftover.exists()
    assert sorted(p.name for p in folder.iterdir()) == ["raw_image.manifest.json", "raw_image.png"]
    assert store.intact(KEY, "raw_image", "k") is not None


def test_remote_roots_have_no_lock_but_keys_are_still_checked() -> None:
    store = Store("memory://kseg-lock-test")
    with store.lock(KEY), store.lock(KEY):  # a no-op: not even exclusive
        pass
    with pytest.raises(StoreError, match="refusing partition key"), store.lock("../x"):
        pass


def test_an_image_is_not_trashed_while_a_run_holds_it(tmp_path: Path) -> None:
    # The sensor moves a deleted image's outputs to the trash under the image's lock: while
    # a run (here a child holding the lock) writes the image, nothing is moved.
    store = Store(tmp_path / "store")
    store.save(KEY, "raw_image", cache_key="k", code_version="1", files={"raw_image.png": b"x"})
    with _held_by_a_child(tmp_path / "store"):
        with pytest.raises(StoreError, match=f"^{KEY}: another run kept this image locked"):
            store.trash(KEY, lock_timeout=0.3)
        assert store.intact(KEY, "raw_image", "k") is not None
        assert not (tmp_path / "store" / "trash").exists()
    where = Path(store.trash(KEY, source_path="photo.png"))
    assert where.parent == tmp_path / "store" / "trash" and where.name.endswith(f"-{KEY}")
    assert sorted(p.name for p in (where / "outputs").iterdir()) == [
        "raw_image.manifest.json",
        "raw_image.png",
    ]
    assert not (tmp_path / "store" / "images" / KEY).exists()
