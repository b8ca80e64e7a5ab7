"""Issue 5 through the engine: each case decoded *and segmented* in process, then every case
at once through ``kseg segment`` in a subprocess (one stderr line per bad file, exit 1,
never a traceback, nothing written outside ``--out``).

Decoding rules themselves are pinned in ``tests/pipeline/test_images.py``; here each case
goes through the whole engine (load, sweep, choose K, segment, render, write).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from robustness_cases import BAD, CASES, GOOD, LIMIT, Case, case_params, pattern
from robustness_util import ROOT, child_env, python, tree_snapshot, without_file_permission_override

import pipeline.images
from pipeline.errors import ImageError
from pipeline.images import load_image
from pipeline.segment import segment_image
from pipeline.settings import SegmentSettings

SETTINGS = SegmentSettings()
CLI_FILES = {
    "segmented.png",
    "labels.png",
    "overlay.jpg",
    "segments.parquet",
    "elbow.parquet",
    "elbow.png",
    "regions.png",
    "regions_overlay.jpg",
    "regions.parquet",
    "region_merges.parquet",
    "summary.json",
}
NOT_UTF8 = os.fsdecode(b"latin1-caf\xe9.png")  # a name whose bytes are not UTF-8


def kseg_segment(*args: str | Path, prefix: list[str] | None = None, cwd: Path = ROOT):
    return subprocess.run(
        [*(prefix or []), *python("-m", "assets.cli", "segment", *map(str, args))],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        timeout=300,
        check=False,
    )


def text(stream: bytes) -> str:
    return stream.decode("utf-8", "replace")


# --- in process: load + segment --------------------------------------------------------


@pytest.mark.parametrize("case", case_params())
def test_engine(case: Case, tmp_path: Path) -> None:
    path = case.write(tmp_path)
    if not case.ok:
        with pytest.raises(ImageError) as info:
            load_image(path, max_pixels=LIMIT)
        assert info.value.path == str(path)
        assert case.error in info.value.reason
        assert str(info.value) == f"{path}: {info.value.reason}"
        assert "\n" not in str(info.value)
        return
    image = load_image(path, max_pixels=LIMIT)
    result = segment_image(image.rgb, SETTINGS)
    seg = result.segmentation
    assert (image.width, image.height) == case.size
    assert seg.labels.shape == (image.height, image.width)
    assert seg.segmented.shape == image.rgb.shape and seg.segmented.dtype == np.uint8
    # K never exceeds the distinct colours (capped below k_min when there are fewer).
    assert 1 <= result.choice.k <= min(SETTINGS.k_max, result.sweep.n_colours)
    assert len(np.unique(seg.labels)) == result.choice.k
    if result.sweep.n_colours < SETTINGS.k_min:
        assert result.choice.capped
    if case.k is not None:
        assert result.choice.k == case.k
    if case.n_colours is not None:
        assert result.sweep.n_colours == case.n_colours
    for note in case.notes:
        assert note in image.notes
    if case.pixels is not None:
        case.pixels(image.rgb)


@pytest.mark.parametrize(
    ("colours", "settings", "k"),
    [
        pytest.param(1, SegmentSettings(k_override=5), 1, id="one_colour_k_override_5"),
        pytest.param(2, SegmentSettings(k_override=5), 2, id="two_colours_k_override_5"),
        pytest.param(2, SegmentSettings(k_min=4, k_max=8), 2, id="two_colours_k_min_4"),
    ],
)
def test_k_is_capped_at_the_distinct_colours(colours, settings, k) -> None:
    rgb = np.zeros((6, 6, 3), np.uint8)
    rgb[:, 3:] = (255, 255, 255) if colours == 2 else 0
    result = segment_image(rgb, settings)
    assert result.choice.k == k
    assert "capped" in result.choice.detail and f"{k} distinct colour" in result.choice.detail
    assert len(np.unique(result.segmentation.labels)) == k


def test_a_file_replaced_during_its_load_is_decoded_as_read(tmp_path: Path, monkeypatch) -> None:
    # load_image reads the file once; what it decodes is exactly those bytes, whatever
    # happens to the file afterwards.
    path = tmp_path / "a.png"
    Image.fromarray(pattern(6, 8)).save(path)
    decode = pipeline.images.decode_image

    def replace_then_decode(data, **kwargs):
        replacement = tmp_path / ".new.png"
        Image.fromarray(pattern(9, 3)).save(replacement, format="PNG")
        os.replace(replacement, path)
        return decode(data, **kwargs)

    monkeypatch.setattr(pipeline.images, "decode_image", replace_then_decode)
    image = load_image(path)
    np.testing.assert_array_equal(image.rgb, pattern(6, 8))
    monkeypatch.undo()
    np.testing.assert_array_equal(load_image(path).rgb, pattern(9, 3))


# --- kseg segment: every case in one subprocess ----------------------------------------


@pytest.fixture(scope="module")
def cli_batch(tmp_path_factory):
    """All cases, plus a directory named x.jpg, a non-UTF-8 name and ``...png``, in one run."""
    base = tmp_path_factory.mktemp("cli")
    folder = base / "in"
    paths = {case.id: case.write(folder) for case in CASES}
    (folder / "x.jpg").mkdir()
    paths["directory_named_x_jpg"] = folder / "x.jpg"
    Image.fromarray(pattern(6, 8)).save(folder / NOT_UTF8, format="PNG")
    paths["name_not_utf8"] = folder / NOT_UTF8
    Image.fromarray(pattern(6, 8)).save(folder / "...png", format="PNG")  # stem ".."
    paths["stem_dot_dot"] = folder / "...png"
    out = base / "deep" / "out"
    before = tree_snapshot(base)
    # "--" ends the options, so "-leading-dash.png" is a file name, not an option.
    proc = kseg_segment(
        "--out", out, "--json", "--quiet", "--max-pixels", LIMIT, "--", *paths.values()
    )
    return {"proc": proc, "paths": paths, "out": out, "base": base, "before": before}


def _error_lines(batch) -> list[str]:
    return [line for line in text(batch["proc"].stderr).splitlines() if line.strip()]


def _rows(batch) -> dict[str, dict]:
    return {row["image"]: row for row in json.loads(batch["proc"].stdout)}


def test_kseg_segment_exit_status_and_stderr(cli_batch) -> None:
    proc = cli_batch["proc"]
    stderr = text(proc.stderr)
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr
    bad = len(BAD) + 1  # + the directory
    total = len(cli_batch["paths"])
    # One line per bad file, then the count; nothing else (--quiet).
    assert len(_error_lines(cli_batch)) == bad + 1, stderr
    assert _error_lines(cli_batch)[-1] == f"kseg: {bad} of {total} image(s) failed"
    assert len(_rows(cli_batch)) == total - bad


@pytest.mark.parametrize("case", case_params())
def test_kseg_segment(cli_batch, case: Case) -> None:
    path = cli_batch["paths"][case.id]
    rows = _rows(cli_batch)
    mine = [line for line in _error_lines(cli_batch) if line.startswith(f"kseg: error: {path}: ")]
    if not case.ok:
        assert len(mine) == 1, _error_lines(cli_batch)
        assert case.error in mine[0]
        assert str(path) not in rows
        assert not (cli_batch["out"] / path.stem).exists()
        return
    assert mine == []
    row = rows[str(path)]
    assert (row["width"], row["height"]) == case.size
    if case.k is not None:
        assert row["k"] == case.k
    if case.n_colours is not None:
        assert row["n_colours"] == case.n_colours
    for note in case.notes:
        assert note in row["image_notes"]
    folder = Path(row["outputs"]["summary"]).parent
    assert folder.parent == cli_batch["out"]
    assert {p.name for p in folder.iterdir()} == CLI_FILES  # no temporary files left


def test_kseg_segment_directory_named_like_an_image(cli_batch) -> None:
    path = cli_batch["paths"]["directory_named_x_jpg"]
    assert f"kseg: error: {path}: is a directory" in _error_lines(cli_batch)


def test_kseg_segment_name_that_is_not_utf8(cli_batch) -> None:
    # Processed; its output folder spells the undecodable byte as \xe9 (a valid name),
    # and the table/JSON never crash on it.
    row = _rows(cli_batch)[str(cli_batch["paths"]["name_not_utf8"])]
    folder = Path(row["outputs"]["summary"]).parent
    assert folder == cli_batch["out"] / "latin1-caf\\xe9"
    assert {p.name for p in folder.iterdir()} == CLI_FILES


def test_kseg_segment_never_writes_outside_out(cli_batch) -> None:
    # "...png" has the stem "..": its folder is "image", not the parent of --out.
    row = _rows(cli_batch)[str(cli_batch["paths"]["stem_dot_dot"])]
    assert Path(row["outputs"]["summary"]).parent == cli_batch["out"] / "image"
    after = tree_snapshot(cli_batch["base"], skip=(cli_batch["out"],))
    new = set(after) - set(cli_batch["before"])
    assert new == {"deep"}, new  # the parent of --out (created); --out itself is skipped
    assert all(after[p] == v for p, v in cli_batch["before"].items())  # inputs untouched


def test_kseg_segment_table_output_with_awkward_names(tmp_path: Path) -> None:
    # The table (not --json) prints every name, including one that is not UTF-8.
    files = [GOOD[0].write(tmp_path / "in")]
    Image.fromarray(pattern(4, 4)).save(tmp_path / "in" / NOT_UTF8, format="PNG")
    files.append(tmp_path / "in" / NOT_UTF8)
    proc = kseg_segment("--out", tmp_path / "out", "--quiet", *files)
    assert proc.returncode == 0, text(proc.stderr)
    assert proc.stderr == b""
    assert "latin1-caf\\xe9.png" in text(proc.stdout)


def test_kseg_segment_leading_dash_needs_the_end_of_options_marker(tmp_path: Path) -> None:
    # Like every command-line tool: "-x.png" alone is read as an option (usage error,
    # exit 2, no traceback); "./-x.png" or "-- -x.png" name the file.
    Image.fromarray(pattern(4, 4)).save(tmp_path / "-x.png")
    bare = kseg_segment("--out", "out", "-x.png", cwd=tmp_path)
    assert bare.returncode == 2 and b"Traceback" not in bare.stderr
    assert text(bare.stderr).splitlines()[-1].startswith("kseg segment: error:")
    proc = kseg_segment("--out", "out", "--quiet", "./-x.png", "--", "-x.png", cwd=tmp_path)
    assert proc.returncode == 0, text(proc.stderr)
    assert (tmp_path / "out" / "-x" / "summary.json").is_file()
    assert (tmp_path / "out" / "-x-2" / "summary.json").is_file()


def test_kseg_segment_unreadable_file(tmp_path: Path) -> None:
    prefix = without_file_permission_override()
    if prefix is None:
        pytest.skip("running as root without setpriv: file modes cannot be enforced")
    good = GOOD[0].write(tmp_path)
    locked = tmp_path / "locked.png"
    Image.fromarray(pattern(4, 4)).save(locked)
    locked.chmod(0)
    try:
        proc = kseg_segment("--out", tmp_path / "out", "--quiet", good, locked, prefix=prefix)
    finally:
        locked.chmod(0o644)
    stderr = text(proc.stderr)
    assert proc.returncode == 1 and "Traceback" not in stderr
    assert stderr.splitlines() == [
        f"kseg: error: {locked}: permission denied",
        "kseg: 1 of 2 image(s) failed",
    ]
    assert (tmp_path / "out" / good.stem / "summary.json").is_file()


def test_kseg_segment_unexpected_errors_are_one_line(tmp_path: Path) -> None:
    # A bug inside the engine (simulated) is still one line naming the file, exit 1.
    good = GOOD[0].write(tmp_path)
    code = (
        "import sys, pipeline.segment as s\n"
        "def boom(*a, **k): raise RuntimeError('simulated bug\\nsecond line')\n"
        "s.segment_image = boom\n"
        "from assets.cli import main\n"
        f"sys.exit(main(['segment', '--out', {str(tmp_path / 'out')!r}, {str(good)!r}]))\n"
    )
    proc = subprocess.run(
        python("-c", code), cwd=ROOT, env=child_env(), capture_output=True, timeout=120
    )
    assert proc.returncode == 1
    assert text(proc.stderr).splitlines() == [
        f"kseg: error: {good}: unexpected error (RuntimeError: simulated bug)",
        "kseg: 1 of 1 image(s) failed",
    ]
