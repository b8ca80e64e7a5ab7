"""The asset checks' verdicts: plain functions of the data (no Dagster import).

Each per-image step declares its checks (:class:`assets.steps.base.CheckDef`) and runs
these functions on its stored output for every image, hit or miss alike; the results
are recorded per partition. They are tested directly on good and broken data.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from pipeline.settings import SegmentSettings

__all__ = [
    "CheckOutcome",
    "check_feature_rows",
    "check_k_in_range",
    "check_labels",
    "check_region_table",
    "check_regions_connected",
    "check_report_coverage",
    "check_wcss_non_increasing",
    "feature_rows_from_parquet",
]


@dataclass(frozen=True)
class CheckOutcome:
    """The result of one check on one partition."""

    name: str
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


def check_feature_rows(
    num_rows: int, height: int, width: int, null_counts: Mapping[str, int]
) -> CheckOutcome:
    """Rows == ``height * width`` and every column free of nulls."""
    expected = int(height) * int(width)
    with_nulls = {name: int(n) for name, n in null_counts.items() if n}
    passed = int(num_rows) == expected and not with_nulls
    problems = []
    if int(num_rows) != expected:
        problems.append(f"{num_rows} rows, expected {height}x{width}={expected}")
    if with_nulls:
        problems.append(f"nulls in {sorted(with_nulls)}")
    return CheckOutcome(
        "rows_match_pixels",
        passed,
        "; ".join(problems) or f"{num_rows} rows = {height}x{width}, no nulls",
        {"rows": int(num_rows), "expected_rows": expected, "columns_with_nulls": len(with_nulls)},
    )


def feature_rows_from_parquet(stream: IO[bytes], height: int, width: int) -> CheckOutcome:
    """:func:`check_feature_rows` from a Parquet file's footer (no column is read
    unless a column chunk lacks null-count statistics)."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(stream)
    meta = parquet.metadata
    nulls: dict[str, int] = {}
    for j in range(meta.num_columns):
        name = meta.schema.column(j).name
        total = 0
        for i in range(meta.num_row_groups):
            stats = meta.row_group(i).column(j).statistics
            if stats is None or not stats.has_null_count:
                total = parquet.read(columns=[name]).column(0).null_count
                break
            total += stats.null_count
        nulls[name] = total
    return check_feature_rows(meta.num_rows, height, width, nulls)


def check_wcss_non_increasing(k_values: Sequence[int], wcss: Sequence[float]) -> CheckOutcome:
    """WCSS at each K is at most WCSS at the previous K (ties allowed)."""
    ks = np.asarray(k_values)
    w = np.asarray(wcss, dtype=np.float64)
    rises = [
        int(ks[i + 1]) for i in range(len(w) - 1) if not w[i + 1] <= w[i] * (1 + 1e-12) + 1e-12
    ]
    ordered = bool(np.all(np.diff(ks) > 0))
    passed = ordered and not rises and bool(np.all(np.isfinite(w)))
    if passed:
        text = f"WCSS non-increasing over K={int(ks[0])}..{int(ks[-1])}"
    elif not ordered:
        text = "K values are not increasing"
    elif rises:
        text = f"WCSS increases at K={rises}"
    else:
        text = "WCSS has non-finite values"
    return CheckOutcome("wcss_non_increasing", passed, text, {"increases": len(rises)})


def check_k_in_range(k: int, settings: SegmentSettings, *, capped: bool = False) -> CheckOutcome:
    """K in ``[k_min, k_max]``, or equal to the override; when the image has fewer
    distinct colours than ``k_min`` (``capped``), any K below ``k_min`` is accepted."""
    k = int(k)
    if settings.k_override is not None:
        passed = k == settings.k_override or (capped and k < settings.k_override)
        wanted = f"override {settings.k_override}"
    else:
        passed = settings.k_min <= k <= settings.k_max or (capped and 1 <= k < settings.k_min)
        wanted = f"range {settings.k_min}..{settings.k_max}"
    text = f"K={k} {'matches' if passed else 'is outside'} the {wanted}"
    if capped:
        text += " (K capped by the number of distinct colours)"
    return CheckOutcome(
        "k_in_range",
        passed,
        text,
        {"chosen_k": k, "k_min": settings.k_min, "k_max": settings.k_max},
    )


def check_labels(
    labels: np.ndarray,
    height: int,
    width: int,
    k: int,
    *,
    name: str = "labels_match_image",
    what: str = "labels",
) -> CheckOutcome:
    """Label map of shape ``(height, width)`` whose labels are exactly ``0..k-1``.

    ``name`` and ``what`` name the check and the labels (the region map's check is
    the same test on its regions).
    """
    problems = []
    if labels.shape != (int(height), int(width)):
        problems.append(f"shape {labels.shape}, image is {(int(height), int(width))}")
    present = np.unique(labels)
    if present.size != int(k) or not np.array_equal(present, np.arange(int(k))):
        shown = present[:10].tolist()
        problems.append(f"{what} {shown}{'...' if present.size > 10 else ''}, expected 0..{k - 1}")
    return CheckOutcome(
        name,
        not problems,
        "; ".join(problems) or f"{height}x{width} {what}, exactly 0..{k - 1}",
        {f"{what}_present": int(present.size), "k" if what == "labels" else f"n_{what}": int(k)},
    )


def check_regions_connected(labels: np.ndarray, n_regions: int) -> CheckOutcome:
    """Every region of a region map is one 4-connected piece.

    A map whose ``n_regions`` labels are all present is 4-connected region by region
    exactly when it has ``n_regions`` 4-connected components.
    """
    from pipeline.components import split_components

    _, pieces = split_components(labels)
    passed = pieces == int(n_regions)
    text = (
        f"all {n_regions} regions are 4-connected"
        if passed
        else f"{pieces} 4-connected pieces for {n_regions} regions: some region is split"
    )
    return CheckOutcome(
        "regions_connected", passed, text, {"pieces": int(pieces), "n_regions": int(n_regions)}
    )


def check_region_table(table: Any, labels: np.ndarray) -> CheckOutcome:
    """The region table has one row per region of ``labels``, numbered ``0..N-1`` in
    order, each with the region's exact pixel count.

    Parameters
    ----------
    table : pandas.DataFrame
        The region table (columns ``region`` and ``pixel_count`` at least).
    labels : (H, W) ndarray of int
        The region map.
    """
    counts = np.bincount(labels.ravel().astype(np.int64)) if labels.size else np.zeros(0)
    n = counts.size
    regions = table["region"].to_numpy()
    pixels = table["pixel_count"].to_numpy()
    problems = []
    if len(table) != n:
        problems.append(f"{len(table)} rows for {n} regions in the map")
    elif not np.array_equal(regions, np.arange(n)):
        problems.append("rows are not numbered 0..N-1 in order")
    elif not np.array_equal(pixels, counts):
        wrong = int(np.count_nonzero(pixels != counts))
        problems.append(f"{wrong} region(s) with a pixel count unlike the map's")
    return CheckOutcome(
        "regions_match_table",
        not problems,
        "; ".join(problems) or f"{n} rows, one per region, pixel counts match the map",
        {"rows": len(table), "n_regions": int(n)},
    )


def check_report_coverage(registered: Iterable[str], rows: Mapping[str, str]) -> CheckOutcome:
    """Every registered partition has a report row whose status is ``ok``.

    Parameters
    ----------
    registered : iterable of str
        Partition keys registered in the instance.
    rows : mapping of str to str
        Report rows: partition key to status.
    """
    wanted = set(registered)
    missing = sorted(wanted - set(rows))
    incomplete = sorted(k for k in wanted & set(rows) if rows[k] != "ok")
    passed = not missing and not incomplete
    parts = []
    if missing:
        parts.append(f"{len(missing)} image(s) without a row: {missing[:5]}")
    if incomplete:
        parts.append(f"{len(incomplete)} image(s) not fully segmented: {incomplete[:5]}")
    return CheckOutcome(
        "covers_every_image",
        passed,
        "; ".join(parts) or f"all {len(wanted)} registered image(s) covered",
        {"registered": len(wanted), "missing": len(missing), "incomplete": len(incomplete)},
    )
