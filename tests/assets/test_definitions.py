"""The code location loads, declares the agreed assets one step each with true lineage,
uses Dagster's public API only, and the engine stays Dagster-free."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from assets.definitions import build_defs, defs
from assets.names import BATCH_SIZE, IMAGE_ASSETS, REPORT, SETTINGS, SOURCE, SOURCES
from assets.steps import STEPS
from pipeline.settings import SegmentSettings

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {
    "source_image",
    "image_settings",
    "raw_image",
    "pixel_features",
    "elbow_metrics",
    "chosen_k",
    "segmented_image",
    "label_map",
    "segment_stats",
    "region_map",
    "region_boundaries",
    "region_stats",
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
        if name in STEPS:
            assert node.code_version == STEPS[name].code_version, name


def test_each_per_image_asset_is_its_own_step() -> None:
    job = defs.resolve_job_def("segment_images")
    ops = {node.name for node in job.graph.node_defs}
    assert ops == set(IMAGE_ASSETS)


def test_lineage_is_what_each_step_reads() -> None:
    graph = defs.resolve_asset_graph()
    for name, step in STEPS.items():
        parents = {k.to_user_string() for k in graph.get(dg.AssetKey(name)).parent_keys}
        expected = {*step.reads, *([SETTINGS] if step.settings else [])}
        assert parents == expected, name
    # The sweep reads the feature table, not the decoded image.
    assert STEPS["elbow_metrics"].reads == ("pixel_features",)
    report = {k.to_user_string() for k in graph.get(dg.AssetKey(REPORT)).parent_keys}
    assert report == set(IMAGE_ASSETS)


def test_per_image_assets_are_partitioned_and_batched() -> None:
    graph = defs.resolve_asset_graph()
    for name in (*SOURCES, *IMAGE_ASSETS):
        partitions = graph.get(dg.AssetKey(name)).partitions_def
        assert isinstance(partitions, dg.DynamicPartitionsDefinition)
        assert partitions.name == "images"
    for name in IMAGE_ASSETS:  # one policy: a backfill runs every step of a batch together
        assert graph.get(dg.AssetKey(name)).backfill_policy == dg.BackfillPolicy.multi_run(
            BATCH_SIZE
        )
    assert graph.get(dg.AssetKey(REPORT)).partitions_def is None


def test_checks_are_declared_on_the_right_assets_and_block() -> None:
    graph = defs.resolve_asset_graph()
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert checks == {
        ("pixel_features", "rows_match_pixels"),
        ("elbow_metrics", "wcss_non_increasing"),
        ("chosen_k", "k_in_range"),
        ("label_map", "labels_match_image"),
        ("region_map", "regions_contiguous"),
        ("region_map", "regions_connected"),
        ("region_stats", "regions_match_table"),
        ("segmentation_report", "covers_every_image"),
    }
    for key in graph.asset_check_keys:
        if key.asset_key.to_user_string() != REPORT:
            assert graph.get(key).blocking, key


def test_jobs_run_in_process_and_the_settings_job_targets_no_asset() -> None:
    job = defs.resolve_job_def("segment_images")
    assert job.executor_def.name == "in_process"
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == set(IMAGE_ASSETS)
    settings_job = defs.resolve_job_def("set_image_settings")
    assert not settings_job.asset_layer.executable_asset_keys


def test_no_launchpad_setting_can_change_a_segmentation_for_one_run() -> None:
    # The project settings resource has no run config: settings come from one place.
    job = defs.resolve_job_def("segment_images")
    resources = job.run_config_schema.config_type.fields["resources"].config_type.fields
    assert not resources["settings"].config_type.fields["config"].config_type.fields
    with pytest.raises(dg.DagsterInvalidConfigError, match='unexpected config entry "k_max"'):
        dg.validate_run_config(job, {"resources": {"settings": {"config": {"k_max": 20}}}})
    with pytest.raises(dg.DagsterInvalidConfigError, match='unexpected config entry "k"'):
        dg.validate_run_config(job, {"ops": {"chosen_k": {"config": {"k": 7}}}})


def test_project_settings_are_given_in_the_definitions_or_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("KSEG_K_MAX", "9")
    from_env = build_defs().resources["settings"]
    assert from_env.resource_fn(None).defaults.k_max == 9
    given = build_defs(settings=SegmentSettings(k_max=7)).resources["settings"]
    assert given.resource_fn(None).defaults.k_max == 7


def test_bad_environment_settings_stop_the_code_location_naming_every_variable(
    monkeypatch,
) -> None:
    monkeypatch.setenv("KSEG_K_MAX", "1")
    monkeypatch.setenv("KSEG_FEATURES", "xyz")
    with pytest.raises(ValueError, match=r"KSEG_K_MAX.*KSEG_FEATURES"):
        build_defs()


def _python_files() -> list[Path]:
    folders = ("assets", "pipeline", "tests", "benchmarks", "scripts", "deploy")
    return [
        p for folder in folders for p in (ROOT / folder).rglob("*.py") if ".venv" not in p.parts
    ]


def test_no_private_dagster_module_is_imported_anywhere_in_the_project() -> None:
    offenders = []
    for path in _python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.relative_to(ROOT)}: {name}"
                for name in names
                if name.startswith(("dagster._", "dagster_shared", "dagster_graphql."))
                or (name.startswith("dagster") and "._" in name)
            ]
    assert not offenders


def test_no_internal_dagster_environment_variable_is_set_anywhere() -> None:
    text = "\n".join(p.read_text(encoding="utf-8") for p in _python_files())
    for name in ("DAGSTER_EMIT_PARTITION_SUBSET", "DAGSTER_EVENT_BATCH_SIZE", "gc.freeze"):
        assert name not in text.replace(f'"{name}"', "")  # (this test spells them once)


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


def test_source_names_are_the_observed_assets() -> None:
    assert SOURCES == (SOURCE, SETTINGS)
