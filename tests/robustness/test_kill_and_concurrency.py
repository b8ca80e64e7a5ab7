"""A run SIGKILLed while writing, then rerun; two runs on one image at the same time.

The runs are real child processes driving the project's ``materialise`` (what ``kseg
run`` uses) on a persistent instance; ``robustness_child.py`` pauses them at an exact
write (or the parent kills at a time it observes), then the parent kills them with
SIGKILL or lets them go on.

What protects the outputs (``assets/store.py``):

* every file is written under a temporary name and renamed; a step's manifest (cache
  key + SHA-256 of every file) is written last;
* a stored output is reused only if its manifest has the expected key *and* every file
  still has its recorded SHA-256 (content, not existence);
* one run at a time per image: ``Store.lock`` (``flock``, released by the kernel when its
  holder dies) is held while a run looks up, computes, saves and describes an image.
"""

from __future__ import annotations

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
from robustness_dagster import all_intact, kseg_run
from robustness_util import ROOT, child_env, python

from assets.cache import chain_keys, sha256_bytes
from assets.incoming import partition_key_for
from assets.keys import CHOSEN, ELBOW, IMAGE_ASSETS, LABELS, SEGMENTED, STATS
from assets.run import build_report, open_instance
from assets.storage import KsegStorage
from assets.store import Store
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
            raise AssertionError(f"child exited early:\n{proc.stderr.read().decode()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the child")
        time.sleep(0.005)


def keys_for(config: dict, source: bytes) -> dict[str, str]:
    return chain_keys(sha256_bytes(source), SegmentSettings(**config))


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
        if path.suffix == ".png":
            with Image.open(path) as image:
                image.load()
        elif path.suffix == ".parquet":
            pq.read_table(path)
        else:
            json.loads(path.read_bytes())


SCENARIOS = {
    # (file the child is writing when killed, half of it already in its temporary file)
    "half_written_label_map": ("label_map.png", True),
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
    if scenario == "half_written_label_map":
        assert store.manifest(KEY, ELBOW).cache_key == second[ELBOW]
        assert reusable[LABELS] and reusable[STATS] and not reusable[SEGMENTED]
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
        assert build_report(instance, storage)[1] == []
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
    # Run A (k=2) is paused in the middle of writing its outputs, holding the image's
    # lock; run B (k=3) on the same image, same store, same instance, starts and must
    # wait; A then finishes, B goes on. Their writes never interleave and the store ends
    # with one consistent, verified set: B's.
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
    assert run_a.returncode == 0, err_a.decode()[-3000:]
    assert run_b.returncode == 0, err_b.decode()[-3000:]
    assert json.loads(out_a)["pid"] == pid_a

    events = _events(log)
    held = [e for e in events if e[1] in ("lock-held", "lock-release")]
    assert held == [
        (pid_a, "lock-held", KEY),
        (pid_a, "lock-release", KEY),
        (run_b.pid, "lock-held", KEY),
        (run_b.pid, "lock-release", KEY),
    ]
    writes = [e[0] for e in events if e[1] == "wrote"]
    switch = writes.index(run_b.pid)
    assert set(writes[:switch]) == {pid_a} and set(writes[switch:]) == {run_b.pid}

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
