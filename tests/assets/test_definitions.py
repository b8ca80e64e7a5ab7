"""The code location loads, declares the agreed assets, and the engine stays Dagster-free."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from assets.definitions import defs
from assets.keys import BATCH_SIZE, CODE_VERSIONS, IMAGE_ASSETS, REPORT, SOURCE

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {
    "source_image",
    "raw_image",
    "pixel_features",
    "elbow_metrics",
    "chosen_k",
    "segmented_image",
    "label_map",
    "segment_stats",
    "segmentation_report",
}


def test_definitions_validate() -> None:
    dg.Definitions.validate_loadable(defs)


def test_the_asset_keys_are_the_agreed_ones() -> None:
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == EXPECTED


def test_every_asset_has_group_description_kinds_and_code_version() -> None:
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        name = key.to_user_string()
        assert node.group_name, name
        assert node.description and "\n" not in node.description.strip(), name
        assert node.kinds, name
        if name != SOURCE:  # a source is observed, not computed: it has no code version
            assert node.code_version == CODE_VERSIONS[name], name


def test_per_image_assets_are_partitioned_and_batched() -> None:
    graph = defs.resolve_asset_graph()
    for name in (SOURCE, *IMAGE_ASSETS):
        partitions = graph.get(dg.AssetKey(name)).partitions_def
        assert isinstance(partitions, dg.DynamicPartitionsDefinition)
        assert partitions.name == "images"
    steps = graph.get(dg.AssetKey("raw_image"))
    assert steps.backfill_policy == dg.BackfillPolicy.multi_run(BATCH_SIZE)
    assert graph.get(dg.AssetKey(REPORT)).partitions_def is None


def test_checks_are_declared_on_the_right_assets() -> None:
    graph = defs.resolve_asset_graph()
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert checks == {
        ("pixel_features", "rows_match_pixels"),
        ("elbow_metrics", "wcss_non_increasing"),
        ("chosen_k", "k_in_range"),
        ("label_map", "labels_match_image"),
        ("segmentation_report", "covers_every_image"),
    }


def test_segment_images_job_runs_in_process() -> None:
    job = defs.resolve_job_def("segment_images")
    assert job.executor_def.name == "in_process"
    keys = {k.to_user_string() for k in job.asset_layer.executable_asset_keys}
    assert keys == set(IMAGE_ASSETS)


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("module", ["pipeline", "pipeline.segment", "assets", "assets.cli"])
def test_engine_and_cli_imports_leave_dagster_out(module: str) -> None:
    code = f"import sys, {module}; sys.exit('dagster' in sys.modules)"
    result = _python(code)
    assert result.returncode == 0, f"importing {module} imported dagster\n{result.stderr}"


def test_the_code_location_module_loads_in_a_fresh_interpreter_without_warnings() -> None:
    result = _python("import assets.definitions as d; print(type(d.defs).__name__)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Definitions"


def test_workspace_yaml_points_at_the_definitions() -> None:
    text = (ROOT / "workspace.yaml").read_text()
    assert "module_name: assets.definitions" in text
