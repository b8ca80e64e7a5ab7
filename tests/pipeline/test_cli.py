"""End-to-end tests of ``kseg segment`` (``python -m assets.cli segment``) in a subprocess."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.images import load_image
from pipeline.regions import MERGE_COLUMNS, REGION_COLUMNS
from pipeline.render import SEGMENT_COLUMNS, boundaries_on
from pipeline.sweep import sweep_from_arrow

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OUTPUT_FILES = {
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
JSON_KEYS = {
    "image", "k", "reason", "knee_strength", "k_values", "wcss", "seconds", "outputs",
    "n_regions", "regions",
}  # fmt: skip
REGION_FILES = {"regions.png", "regions_overlay.jpg", "regions.parquet", "region_merges.parquet"}
MAGENTA = np.array([255, 0, 255], dtype=np.uint8)


def run_kseg(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "assets.cli", "segment", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line.lower()]


def read_png(path: Path) -> np.ndarray:
    """A PNG's pixels; a palette PNG (the segmented image) as the RGB it shows."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB") if image.mode == "P" else image).copy()


def read_jpeg(path: Path) -> np.ndarray:
    """A full-size overlay, which kseg writes as JPEG without chroma subsampling."""
    with Image.open(path) as image:
        assert image.format == "JPEG"
        return np.asarray(image).copy()


def close_picture(stored: np.ndarray, drawn: np.ndarray, edge: np.ndarray) -> None:
    """``stored`` is ``drawn`` up to JPEG's loss, the one-pixel lines included."""
    assert stored.shape == drawn.shape
    error = np.abs(stored.astype(np.int16) - drawn)
    assert error.mean() < 6
    assert error[edge].mean() < 20  # with 4:2:0 chroma a magenta line is about 70 off


@pytest.fixture(scope="module")
def batch(tmp_path_factory, photo):
    """Two bundled photos (PNG and JPEG) plus one bad file, run once with --json."""
    folder = tmp_path_factory.mktemp("cli")
    astronaut = folder / "astronaut.png"
    Image.fromarray(photo("astronaut", 160)).save(astronaut)
    coffee = folder / "coffee.jpg"
    Image.fromarray(photo("coffee", 160)).save(coffee, quality=92)
    broken = folder / "broken.jpg"
    broken.write_bytes(b"this is not a JPEG, only text with a .jpg name\n")
    out = folder / "out"
    proc = run_kseg(astronaut, broken, coffee, "--out", out, "--json")
    return {"proc": proc, "out": out, "good": [astronaut, coffee], "broken": broken}


def test_exit_code_and_one_clear_error_line(batch):
    proc = batch["proc"]
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = error_lines(proc.stderr)
    assert len(errors) == 1, proc.stderr
    assert str(batch["broken"]) in errors[0]
    assert "not a recognised image format" in errors[0]
    assert not (batch["out"] / "broken").exists()
    # Progress on many images: one line per image, then the failure count.
    assert "[1/3]" in proc.stderr and "[3/3]" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1] == "kseg: 1 of 3 image(s) failed"


def test_json_on_stdout(batch):
    rows = json.loads(batch["proc"].stdout)
    assert isinstance(rows, list)
    assert [r["image"] for r in rows] == [str(p) for p in batch["good"]]
    for row in rows:
        assert JSON_KEYS.issubset(row)
        assert 2 <= row["k"] <= 12
        assert row["reason"] in ("elbow", "no_clear_elbow")
        assert 0.0 <= row["knee_strength"] <= 1.0
        assert row["k_values"] == [1, *range(2, 13)]
        assert len(row["wcss"]) == len(row["k_values"])
        assert all(a >= b for a, b in zip(row["wcss"], row["wcss"][1:], strict=False))
        assert row["seconds"] > 0
        assert set(Path(p).name for p in row["outputs"].values()) == OUTPUT_FILES


@pytest.mark.parametrize("index", [0, 1], ids=["png", "jpeg"])
def test_output_folder_contents(batch, index):
    image_path = batch["good"][index]
    folder = batch["out"] / image_path.stem
    assert {p.name for p in folder.iterdir()} == OUTPUT_FILES  # no temporary files left
    summary = json.loads((folder / "summary.json").read_text())
    row = json.loads(batch["proc"].stdout)[index]
    assert summary == row
    rgb = load_image(image_path).rgb
    height, width = rgb.shape[:2]
    assert (summary["width"], summary["height"]) == (width, height)
    assert summary["features"] == "lab"
    k = summary["k"]

    labels = read_png(folder / "labels.png")
    assert labels.shape == (height, width)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(np.unique(labels), np.arange(k))

    segments = pq.read_table(folder / "segments.parquet").to_pandas()
    assert list(segments.columns) == list(SEGMENT_COLUMNS)
    assert len(segments) == k
    assert int(segments["pixel_count"].sum()) == height * width
    np.testing.assert_array_equal(segments["pixel_count"], np.bincount(labels.ravel(), minlength=k))
    for row_ in segments.itertuples(index=False):
        mask = labels == row_.label
        np.testing.assert_allclose(
            [row_.mean_r, row_.mean_g, row_.mean_b], rgb[mask].mean(axis=0), rtol=1e-12
        )

    segmented = read_png(folder / "segmented.png")
    assert segmented.shape == (height, width, 3)
    colours = np.rint(segments[["mean_r", "mean_g", "mean_b"]].to_numpy()).astype(np.uint8)
    np.testing.assert_array_equal(segmented, colours[labels])

    edge = np.zeros((height, width), dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    drawn = rgb.copy()
    drawn[edge] = MAGENTA
    close_picture(read_jpeg(folder / "overlay.jpg"), drawn, edge)

    swept = sweep_from_arrow(pq.read_table(folder / "elbow.parquet"))
    assert swept.k_values == summary["k_values"]
    np.testing.assert_allclose(swept.wcss, summary["wcss"], rtol=1e-12)
    at_k = swept.wcss[swept.k_values.index(k)]
    assert summary["wcss_at_k"] == pytest.approx(at_k, rel=1e-9)
    assert swept.n_pixels == height * width

    plot = (folder / "elbow.png").read_bytes()
    assert plot.startswith(PNG_MAGIC)
    assert len(plot) < 160_000  # small enough to embed in Dagster metadata (MAX_EMBED_BYTES)
    with Image.open(io.BytesIO(plot)) as image:
        image.verify()


@pytest.mark.parametrize("index", [0, 1], ids=["png", "jpeg"])
def test_region_outputs(batch, index):
    image_path = batch["good"][index]
    folder = batch["out"] / image_path.stem
    summary = json.loads((folder / "summary.json").read_text())
    rgb = load_image(image_path).rgb
    height, width = rgb.shape[:2]
    regions = read_png(folder / "regions.png")
    n = summary["n_regions"]
    assert summary["regions"]["count"] == n >= 1
    assert regions.shape == (height, width) and regions.dtype == np.uint8
    np.testing.assert_array_equal(np.unique(regions), np.arange(n))
    table = pq.read_table(folder / "regions.parquet").to_pandas()
    assert list(table.columns) == list(REGION_COLUMNS)
    np.testing.assert_array_equal(table["pixel_count"], np.bincount(regions.ravel()))
    merges = pq.read_table(folder / "region_merges.parquet").to_pandas()
    assert list(merges.columns) == list(MERGE_COLUMNS)
    assert merges.loc[merges["chosen"], "regions"].tolist() == [n]
    assert merges["regions"].iloc[0] == summary["regions"]["folded"]
    edge = np.zeros((height, width), dtype=bool)
    edge[:, :-1] |= regions[:, :-1] != regions[:, 1:]
    edge[:-1, :] |= regions[:-1, :] != regions[1:, :]
    drawn = boundaries_on(rgb, regions)
    assert np.isin(drawn[edge], [0, 255]).all()  # boundaries black or white
    close_picture(read_jpeg(folder / "regions_overlay.jpg"), drawn, edge)


def test_fixed_k(tmp_path, photo):
    image = tmp_path / "chelsea.png"
    Image.fromarray(photo("chelsea", 96)).save(image)
    proc = run_kseg(image, "--out", tmp_path / "out", "--k", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)
    assert row["k"] == 4
    assert row["reason"] == "override"
    labels = read_png(tmp_path / "out" / "chelsea" / "labels.png")
    np.testing.assert_array_equal(np.unique(labels), np.arange(4))


def test_rgb_features_wcss_in_sklearn_inertia_units(tmp_path, photo):
    from sklearn.cluster import KMeans

    rgb = np.array(photo("rocket", 96))
    image = tmp_path / "rocket.png"
    Image.fromarray(rgb).save(image)
    proc = run_kseg(image, "--out", tmp_path / "out", "--features", "rgb", "--k-max", "6", "--json")
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)
    pixels = rgb.reshape(-1, 3).astype(np.float64)
    total = float(((pixels - pixels.mean(axis=0)) ** 2).sum())
    assert row["k_values"][0] == 1
    assert row["wcss"][0] == pytest.approx(total, rel=1e-9)
    swept = sweep_from_arrow(pq.read_table(tmp_path / "out" / "rocket" / "elbow.parquet"))
    assert swept.features == "rgb"
    for k, reported in zip(row["k_values"], row["wcss"], strict=True):
        if k == 1:
            continue
        centres = swept.centres[k]
        model = KMeans(n_clusters=k, init=centres, n_init=1, max_iter=1).fit(pixels)
        model.cluster_centers_ = centres.copy()
        assert reported == pytest.approx(-model.score(pixels), rel=1e-9), f"K={k}"


def test_invalid_setting_exits_2_naming_the_field(tmp_path, photo):
    image = tmp_path / "coffee.png"
    Image.fromarray(photo("coffee", 32)).save(image)
    proc = run_kseg(image, "--out", tmp_path / "out", "--k-min", "9", "--k-max", "3")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = error_lines(proc.stderr)
    assert len(errors) == 1, proc.stderr
    assert "k_min" in errors[0]
    assert proc.stdout == ""
    assert not (tmp_path / "out").exists()


def test_no_regions_writes_no_region_files(tmp_path, photo):
    image = tmp_path / "coffee.png"
    Image.fromarray(photo("coffee", 64)).save(image)
    proc = run_kseg(image, "--out", tmp_path / "out", "--no-regions", "--json")
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)
    assert row["n_regions"] is None and row["regions"] is None
    names = {p.name for p in (tmp_path / "out" / "coffee").iterdir()}
    assert names == OUTPUT_FILES - REGION_FILES


def test_region_options_reach_the_regions(tmp_path, photo):
    image = tmp_path / "coffee.png"
    Image.fromarray(photo("coffee", 64)).save(image)
    proc = run_kseg(
        image, "--out", tmp_path / "out", "--regions", "3", "--region-source", "finest",
        "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)
    assert row["n_regions"] == 3 and row["regions"]["rule"] == "override"
    assert np.unique(read_png(tmp_path / "out" / "coffee" / "regions.png")).tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--min-share", "0.5"], "min_share"),
        (["--max-cost", "-1"], "max_cost"),
        (["--min-regions", "9", "--max-regions", "3"], "min_regions"),
    ],
)
def test_invalid_region_setting_exits_2_and_writes_nothing(tmp_path, photo, args, field):
    image = tmp_path / "coffee.png"
    Image.fromarray(photo("coffee", 32)).save(image)
    proc = run_kseg(image, "--out", tmp_path / "out", *args)
    assert proc.returncode == 2
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and repr(field) in errors[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_help_shows_the_region_defaults():
    proc = subprocess.run(
        [sys.executable, "-m", "assets.cli", "segment", "--help"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    text = " ".join(proc.stdout.split())
    for flag, default in [
        ("--min-share", "0.005"), ("--max-cost", "10.0"), ("--stop-strength", "0.5"),
        ("--stop-fallback", "gap"), ("--region-source", "chosen"), ("--max-regions", "100"),
    ]:  # fmt: skip
        assert flag in text and f"(default: {default})" in text, flag
    assert "--no-regions" in text


def test_pipeline_never_imports_dagster(tmp_path, photo):
    """The engine, including its CLI module, runs in a fresh interpreter without Dagster."""
    image = tmp_path / "astronaut.png"
    Image.fromarray(photo("astronaut", 48)).save(image)
    script = textwrap.dedent(
        f"""
        import argparse, importlib, json, pkgutil, sys
        import numpy as np
        import pipeline
        names = [m.name for m in pkgutil.iter_modules(pipeline.__path__)]
        for name in names:
            importlib.import_module("pipeline." + name)
        from pipeline.cli import add_segment_arguments, segment_command
        from pipeline.settings import SegmentSettings
        from pipeline.sweep import sweep
        from pipeline.synthetic import region_scene
        rgb, _ = region_scene(3, seed=0, shape=(32, 40))
        result = sweep(rgb, SegmentSettings(k_max=4))
        assert result.k_values == [1, 2, 3, 4]
        parser = argparse.ArgumentParser()
        add_segment_arguments(parser)
        args = parser.parse_args([{str(image)!r}, "--out", {str(tmp_path / "out")!r}, "--quiet"])
        assert segment_command(args) == 0
        loaded = sorted(m for m in sys.modules if m == "dagster" or m.startswith("dagster"))
        print("RESULT", json.dumps({{"modules": len(names), "dagster": loaded}}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    result = json.loads(line.removeprefix("RESULT "))
    assert result["modules"] >= 13
    assert result["dagster"] == []


def test_help_shows_every_default():
    result = subprocess.run(
        [sys.executable, "-m", "assets.cli", "segment", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    text = " ".join(result.stdout.split())  # argparse wraps lines
    for option, default in (
        ("--k-min", "2"), ("--k-max", "12"), ("--seed", "0"), ("--min-strength", "0.45"),
        ("--variance-target", "0.8"), ("--fallback", "variance"), ("--spatial-weight", "0.0"),
        ("--features", "lab"), ("--max-pixels", "100000000"),
    ):  # fmt: skip
        described = text.split(f"{option} ", 2)[-1]  # after the usage line's mention
        assert f"(default: {default})" in described.split(" --")[0], (option, described[:120])


@pytest.mark.parametrize("kind", ["file", "below_a_file"])
def test_an_out_that_cannot_be_a_folder_fails_first_in_one_line(tmp_path, photo, kind):
    image = tmp_path / "a.png"
    Image.fromarray(photo("coffee", 48)).save(image)
    blocker = tmp_path / "taken"
    blocker.write_bytes(b"not a folder")
    out = blocker if kind == "file" else blocker / "sub"
    result = run_kseg(image, "--out", out)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"kseg: error: --out {out}: "
        + ("is not a folder" if kind == "file" else f"{blocker} is not a folder")
    ]
    assert result.stdout == "" and blocker.read_bytes() == b"not a folder"


def test_the_timed_work_imports_nothing(tmp_path, photo):
    # An image's seconds must be its work, not the engine's lazy imports (they made the
    # first image of a run look 3-4x slower than the next): once kseg segment has
    # imported the engine, segmenting an image imports no third-party module.
    image = tmp_path / "a.png"
    Image.fromarray(photo("coffee", 64)).save(image)
    code = textwrap.dedent(
        f"""
        import argparse, json, sys
        from pipeline import cli
        parser = argparse.ArgumentParser()
        cli.add_segment_arguments(parser)
        args = parser.parse_args([{str(image)!r}, "--out", {str(tmp_path / "out")!r}, "--quiet"])
        cli._import_engine()
        before = set(sys.modules)
        assert cli.segment_command(args) == 0
        local = ("pipeline", "assets", "_")
        print(json.dumps(sorted(m for m in set(sys.modules) - before if not m.startswith(local))))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    added = json.loads(result.stdout.strip().splitlines()[-1])
    third_party = [m for m in added if m.split(".")[0] not in sys.stdlib_module_names]
    assert third_party == [], third_party


def test_samples_into_a_path_that_cannot_be_written_is_one_line(tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_bytes(b"x")
    result = subprocess.run(
        [sys.executable, "-m", "assets.cli", "samples", str(blocker / "in")],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"kseg samples: error: cannot write to {blocker / 'in'}"), line
