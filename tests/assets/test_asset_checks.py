"""The check functions pass on good data and fail on deliberately broken data."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from assets.checks import (
    check_feature_rows,
    check_k_in_range,
    check_labels,
    check_report_coverage,
    check_wcss_non_increasing,
    feature_rows_from_parquet,
)
from pipeline.features import feature_table
from pipeline.settings import SegmentSettings


def _parquet(table: pa.Table) -> io.BytesIO:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    buffer.seek(0)
    return buffer


def test_feature_rows_pass_on_a_real_table() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    outcome = feature_rows_from_parquet(_parquet(feature_table(rgb)), 5, 7)
    assert outcome.passed, outcome.description
    assert outcome.metadata["rows"] == 35


def test_feature_rows_fail_on_a_missing_row_or_a_null() -> None:
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    table = feature_table(rgb, features="rgb")
    short = feature_rows_from_parquet(_parquet(table.slice(0, 15)), 4, 4)
    assert not short.passed
    assert "15 rows, expected 4x4=16" in short.description
    nulls = pa.table({"x": pa.array([1, None, 3]), "r": pa.array([1, 2, 3])})
    with_nulls = feature_rows_from_parquet(_parquet(nulls), 1, 3)
    assert not with_nulls.passed
    assert "nulls in ['x']" in with_nulls.description
    assert not check_feature_rows(16, 4, 4, {"x": 0, "r": 2}).passed


def test_wcss_check() -> None:
    assert check_wcss_non_increasing([1, 2, 3], [9.0, 4.0, 4.0]).passed
    rising = check_wcss_non_increasing([1, 2, 3, 4], [9.0, 4.0, 5.0, 1.0])
    assert not rising.passed and rising.description == "WCSS increases at K=[3]"
    assert not check_wcss_non_increasing([1, 3, 2], [3.0, 2.0, 1.0]).passed
    assert not check_wcss_non_increasing([1, 2], [3.0, float("nan")]).passed


@pytest.mark.parametrize(
    ("k", "settings", "capped", "passed"),
    [
        (4, SegmentSettings(k_min=2, k_max=6), False, True),
        (7, SegmentSettings(k_min=2, k_max=6), False, False),
        (1, SegmentSettings(k_min=2, k_max=6), False, False),
        (1, SegmentSettings(k_min=2, k_max=6), True, True),
        (5, SegmentSettings(k_override=5), False, True),
        (4, SegmentSettings(k_override=5), False, False),
        (3, SegmentSettings(k_override=5), True, True),
    ],
)
def test_k_in_range(k: int, settings: SegmentSettings, capped: bool, passed: bool) -> None:
    outcome = check_k_in_range(k, settings, capped=capped)
    assert outcome.passed is passed, outcome.description
    assert outcome.metadata["chosen_k"] == k


def test_label_check() -> None:
    labels = np.array([[0, 1], [2, 2], [1, 0]], dtype=np.uint8)
    assert check_labels(labels, 3, 2, 3).passed
    wrong_shape = check_labels(labels, 2, 3, 3)
    assert not wrong_shape.passed and "shape (3, 2), image is (2, 3)" in wrong_shape.description
    gap = check_labels(np.where(labels == 1, 3, labels), 3, 2, 3)
    assert not gap.passed and "expected 0..2" in gap.description
    assert not check_labels(labels, 3, 2, 4).passed


def test_report_coverage() -> None:
    assert check_report_coverage(["a", "b"], {"a": "ok", "b": "ok"}).passed
    missing = check_report_coverage(["a", "b"], {"a": "ok"})
    assert not missing.passed and "without a row: ['b']" in missing.description
    incomplete = check_report_coverage(["a"], {"a": "incomplete"})
    assert not incomplete.passed and incomplete.metadata["incomplete"] == 1
