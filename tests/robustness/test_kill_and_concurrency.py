"""A run SIGKILLed while writing, then rerun; two runs on one image at the same time.

The runs are real child processes driving the project's ``materialise`` (what ``kseg
run`` uses) on a persistent instance; ``robustness_child.py`` pauses them at an exact
write (or the parent kills at a time it observes), then the parent kills them with
SIGKILL or lets them go on.

What protects the outputs (``assets/storage.py``):

* every file is written under a temporary name and renamed; a step's manifest (cache
  key + SHA-256 of every file) is written last;
* a stored output is reused only if its manifest has the expected key *and* every file
  still has its recorded SHA-256 (content, not existence);
* one writer at a time per image: ``Store.lock`` (``flock``, released by the kernel when
  its holder dies) is held while a step looks up, computes, saves and describes one
  image's output (each step is its own Dagster op, and takes the lock for each image).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from robustness_cases import pattern
from robustness_dagster import all_intact, kseg_run, project
from robustness_util import ROOT, child_env, python

from assets.definitions import build_defs
from assets.incoming import partition_key_for
from assets.instance import open_instance
from assets.names import CHOSEN, ELBOW, IMAGE_ASSETS, LABELS, SEGMENTED, STATS
from assets.run import build_report
from assets.steps import chain_keys
from assets.storage import KsegStorage, Store
from pipeline.settings import SegmentSettings

pytestmark = pytest.mark.slow

CHILD = Path(__file__).with_name("robustness_child.py")
KEY = partition_key_for("photo.png")
FIRST, SECOND = {"k_override": 2}, {"k_override": 3}
COMPARED = ("raw_image.png", "label_map.png", "segmented_image.png")


def spawn(args: dict) -> subprocess.Popen:
    return subprocess.Popen(
        python(str(CHILD), json.dumps(args)),
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_until(condition, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
            raise AssertionError(f"child exited early:\n{out[-3000:]}\n{err[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the child")
        time.sleep(0.005)


def keys_for(config: dict, source: bytes) -> dict[str, str]:
    return chain_keys(hashlib.sha256(source).hexdigest(), SegmentSettings(**config))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One image fully materialised with FIRST on a persistent instance (copied per test)."""
    base = tmp_path_factory.mktemp("reference")
    (base / "incoming").mkdir()
    Image.fromarray(pattern(24, 32)).save(base / "incoming" / "photo.png")
    instance = open_instance(base / "home")
    try:
        run = kseg_run(instance, base / "incoming", base / "store", config=FIRST)
    finally:
        instance.dispose()
    assert run.code == 0, run.err
    store = Store(base / "store")
    assert all_intact(store, KEY)
    return {
        "base": base,
        "files": {name: store.read_bytes(KEY, name) for name in COMPARED},
        # Every file each step stores (its outputs, its manifest, its description).
        "files_of": {
            asset: {*store.manifest(KEY, asset).files, f"{asset}.manifest.json"}
            | {f"{asset}.description.json"}
            for asset in IMAGE_ASSETS
        },
        "source": (base / "incoming" / "photo.png").read_bytes(),
    }


def copy_reference(reference, tmp_path: Path) -> dict[str, str]:
    for name in ("incoming", "store", "home"):
        shutil.copytree(reference["base"] / name, tmp_path / name, symlinks=True)
    return {name: str(tmp_path / name) for name in ("incoming", "store", "home")}


def assert_no_partial_file_under_a_final_name(folder: Path) -> None:
    for path in folder.iterdir():
        if path.name.startswith("."):
            continue  # a temporary file: never read by anything
        if path.suffix in (".png", ".jpg", ".jpeg", ".webp"):
            with Image.open(path) as image:
                image.load()
        elif path.suffix == ".parquet":
            pq.read_table(path)
        elif path.suffix == ".json":
            json.loads(path.read_bytes())
        else:
            raise AssertionError(f"{path.name}: a stored file of a kind this test cannot check")


SCENARIOS = {
    # (file the child is writing when killed, half of it already in its temporary file)
    # segment_stats is the middle one of the three segmentation steps (which all read
    # raw_image, elbow_metrics and chosen_k): killed there, one sibling (label_map) is
    # already replaced and one (segmented_image) not yet touched.
    "half_written_segment_stats": ("segment_stats.parquet", True),
    "chosen_k_files_written_manifest_half_written": ("chosen_k.manifest.json", True),
    "timed_kill_after_the_new_elbow_manifest": (None, False),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_sigkill_while_writing_then_rerun(reference, tmp_path: Path, scenario: str) -> None:
    paths = copy_reference(reference, tmp_path)
    first, second = keys_for(FIRST, reference["source"]), keys_for(SECOND, reference["source"])
    target, half = SCENARIOS[scenario]
    marker = tmp_path / "paused"
    args = {**paths, "config": SECOND, "log": str(tmp_path / "log")}
    if target:
        args["pause"] = {"file": target, "half": half, "marker": str(marker)}
    store = Store(paths["store"])
    folder = Path(paths["store"]) / "images" / KEY

    child = spawn(args)
    try:
        if target:
            wait_until(marker.exists, child)
        else:  # no hook: kill as soon as the new elbow manifest is visible
            elbow = folder / "elbow_metrics.manifest.json"
            wait_until(lambda: second[ELBOW].encode() in _read(elbow), child)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=60)
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL

    # What the kill left: no half file under a final name; every manifest either
    # verifies or will not be trusted.
    assert_no_partial_file_under_a_final_name(folder)
    reusable = {a: store.intact(KEY, a, first[a]) is not None for a in IMAGE_ASSETS}
    if target and half:
        assert [p.name for p in folder.glob(f".{target}.*.tmp")], "killed before writing?"
    # Exactly the outputs the killed run wrote no file of are reusable (for SECOND's
    # run, raw_image and pixel_features were cache hits: nothing written).
    written = {name for _, event, name in _events(tmp_path / "log") if event == "wrote"}
    touched = {a for a, names in reference["files_of"].items() if names & written}
    assert reusable == {a: a not in touched for a in IMAGE_ASSETS}
    assert {ELBOW} <= touched and not touched & set(IMAGE_ASSETS[:2])
    if scenario == "half_written_segment_stats":
        assert store.manifest(KEY, ELBOW).cache_key == second[ELBOW]
        assert touched == {ELBOW, CHOSEN, LABELS}, "not killed between two segmentation steps"
        assert not reusable[LABELS] and reusable[STATS] and reusable[SEGMENTED]
    if scenario == "chosen_k_files_written_manifest_half_written":
        # The dangerous state: the manifest in place still carries FIRST's key, which the
        # rerun will ask for, but chosen_k.json already holds SECOND's result. Only the
        # SHA-256 check keeps it from being a cache hit.
        manifest = store.manifest(KEY, CHOSEN)
        assert manifest.cache_key == first[CHOSEN] and not store.verify(manifest)
        assert not reusable[CHOSEN] and reusable[SEGMENTED]

    # The report built now (before any rerun) must not show what does not verify.
    instance = open_instance(paths["home"])
    try:
        storage = KsegStorage(incoming_dir=paths["incoming"], store_root=paths["store"])
        assert build_report(instance, build_defs(storage, project(FIRST)))[1] == []
    finally:
        instance.dispose()
    row = report_row(store)
    if scenario == "chosen_k_files_written_manifest_half_written":
        assert row["status"] == "incomplete" and row["chosen_k"] is None
        assert row["missing"] == CHOSEN

    # Rerun with FIRST's settings: exactly the outputs that verify are reused.
    instance = open_instance(paths["home"])
    try:
        rerun = kseg_run(instance, Path(paths["incoming"]), Path(paths["store"]), config=FIRST)
        status = {
            a: instance.fetch_materializations(_asset_key(a), limit=1)
            .records[0]
            .asset_materialization.metadata["cache"]
            .value
            for a in IMAGE_ASSETS
        }
    finally:
        instance.dispose()
    assert rerun.code == 0, rerun.err
    assert "0 new, 1 stale" in rerun.out
    assert not list(folder.glob(".*")), "the killed run's temporary files were not removed"
    assert status == {a: "hit" if reusable[a] else "miss" for a in IMAGE_ASSETS}
    assert all_intact(store, KEY)
    for asset in IMAGE_ASSETS:
        assert store.manifest(KEY, asset).cache_key == first[asset]
    for name, data in reference["files"].items():
        assert store.read_bytes(KEY, name) == data, name
    assert json.loads(store.read_bytes(KEY, "chosen_k.json"))["chosen_k"] == 2
    row = report_row(store)  # rebuilt by the rerun (kseg run)
    assert (row["status"], row["chosen_k"], row["missing"]) == ("ok", 2, "")


def report_row(store: Store) -> dict:
    table = pq.read_table(io.BytesIO(store.read_bytes(None, "segmentation_report.parquet")))
    (row,) = [r for r in table.to_pylist() if r["partition_key"] == KEY]
    return row


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _asset_key(name: str):
    import dagster as dg

    return dg.AssetKey(name)


def test_two_runs_on_one_image_at_the_same_time(tmp_path: Path) -> None:
    # Run A (k=2) is paused in the middle of writing its chosen_k output, holding the
    # image's lock; run B (k=3) on the same image, same store, same instance, starts and
    # must wait; A then finishes, B goes on. Each step of each run holds the image's lock
    # while it writes, so no two writes of the image ever interleave (the two runs may
    # take turns step by step), and the store ends with one consistent, verified set: B's
    # (every step after chosen_k reads its inputs' keys from the store, so a step of A
    # that comes after B's chosen_k finds B's outputs as its cache hits).
    incoming, store_root, home = tmp_path / "incoming", tmp_path / "store", tmp_path / "home"
    incoming.mkdir()
    Image.fromarray(pattern(24, 32)).save(incoming / "photo.png")
    source = (incoming / "photo.png").read_bytes()
    open_instance(home).dispose()  # create the instance's databases once, not in both runs
    log, marker, go = tmp_path / "log", tmp_path / "a-paused", tmp_path / "go"
    common = {"incoming": str(incoming), "store": str(store_root), "home": str(home)}
    common["log"] = str(log)
    pause = {"file": "chosen_k.json", "marker": str(marker), "go": str(go)}
    start_b = tmp_path / "start-b"
    run_a = spawn({**common, "config": FIRST, "pause": pause})
    run_b = spawn({**common, "config": SECOND, "start": str(start_b)})  # imports meanwhile
    try:
        wait_until(marker.exists, run_a)
        pid_a = int(marker.read_text())
        start_b.touch()
        wait_until(lambda: f"{run_b.pid} lock-wait {KEY}" in _read(log).decode(), run_b)
        time.sleep(0.5)  # B would have written by now if nothing stopped it
        events = _events(log)
        assert (run_b.pid, "lock-held", KEY) not in events
        assert not [e for e in events if e[0] == run_b.pid and e[1] == "wrote"]
        go.touch()
        out_a, err_a = run_a.communicate(timeout=300)
        _, err_b = run_b.communicate(timeout=300)
    finally:
        for proc in (run_a, run_b):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert run_a.returncode == 0, (out_a.decode() + err_a.decode())[-3000:]
    assert run_b.returncode == 0, err_b.decode()[-3000:]
    assert json.loads(out_a)["pid"] == pid_a

    events = _events(log)
    held = [(pid, event) for pid, event, name in events if event in ("lock-held", "lock-release")]
    assert {name for _, event, name in events if event.startswith("lock")} == {KEY}
    # The lock is never held twice at once: each lock-held is followed by its own release.
    assert len(held) % 2 == 0
    for (pid, taken), released in zip(held[::2], held[1::2], strict=True):
        assert taken == "lock-held" and released == (pid, "lock-release")
    # Each run held it once per step; B's first hold came after A's paused step (A's
    # fourth: raw_image, pixel_features, elbow_metrics, chosen_k) released it.
    holders = [pid for pid, _ in held[::2]]
    assert holders.count(pid_a) == holders.count(run_b.pid) == len(IMAGE_ASSETS)
    assert holders.index(run_b.pid) >= IMAGE_ASSETS.index(CHOSEN) + 1
    assert holders[: IMAGE_ASSETS.index(CHOSEN) + 1] == [pid_a] * (IMAGE_ASSETS.index(CHOSEN) + 1)
    # Every write happened while its writer held the lock.
    holder = None
    writes = 0
    for pid, event, name in events:
        if event == "lock-held":
            holder = pid
        elif event == "lock-release":
            holder = None
        elif event == "wrote":
            assert pid == holder, f"{pid} wrote {name} while {holder} held the lock"
            writes += 1
    assert writes and {pid for pid, event, _ in events if event == "wrote"} == {pid_a, run_b.pid}

    store = Store(store_root)
    assert all_intact(store, KEY)
    last = keys_for(SECOND, source)
    assert {a: store.manifest(KEY, a).cache_key for a in IMAGE_ASSETS} == last
    assert json.loads(store.read_bytes(KEY, "chosen_k.json"))["chosen_k"] == 3


def _events(log: Path) -> list[tuple[int, str, str]]:
    events = []
    for line in _read(log).decode().splitlines():
        pid, event, name = line.split(" ", 2)
        events.append((int(pid), event, name))
    return events
