"""Tests of pipeline.plots: the choice and report plots are readable, embeddable PNGs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.elbow import choose_k
from pipeline.plots import elbow_plot_png
from pipeline.settings import SegmentSettings
from pipeline.sweep import sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep_result(photo):
    return sweep(photo("chelsea", 96), SegmentSettings())


@pytest.mark.parametrize(
    "settings",
    [SegmentSettings(), SegmentSettings(k_override=4), SegmentSettings(fallback="knee")],
    ids=["auto", "override", "knee-fallback"],
)
def test_elbow_plot_is_a_small_png(sweep_result, settings):
    choice = choose_k(sweep_result.k_values, sweep_result.wcss, settings)
    data = elbow_plot_png(sweep_result.table, choice)
    assert data.startswith(PNG_MAGIC)
    assert len(data) < 150_000
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.format == "PNG"
        # 9 x 3.6 inches at 100 dpi: readable at the UI's width.
        assert image.size == (900, 360)
        pixels = np.asarray(image.convert("RGB"))
    assert np.unique(pixels.reshape(-1, 3), axis=0).shape[0] > 10  # something was drawn


def test_elbow_plot_when_chosen_k_is_not_in_the_table(sweep_result):
    """A capped choice can name a K that the table does not list; the plot still renders."""
    table = sweep_result.table[sweep_result.table["k"] != 5]
    choice = choose_k(sweep_result.k_values, sweep_result.wcss, SegmentSettings(k_override=5))
    data = elbow_plot_png(table, choice)
    assert data.startswith(PNG_MAGIC)
    assert len(data) < 150_000


def test_elbow_plot_is_deterministic(sweep_result):
    choice = choose_k(sweep_result.k_values, sweep_result.wcss, SegmentSettings())
    assert elbow_plot_png(sweep_result.table, choice) == elbow_plot_png(sweep_result.table, choice)


def test_each_index_names_the_k_it_would_pick(sweep_result):
    from pipeline.plots import candidates

    table = sweep_result.table
    picks = candidates(table)
    rows = table[table["k"] > 1]
    assert picks["silhouette"] == int(rows.loc[rows["silhouette"].idxmax(), "k"])
    assert picks["calinski_harabasz"] == int(rows.loc[rows["calinski_harabasz"].idxmax(), "k"])
    assert picks["davies_bouldin"] == int(rows.loc[rows["davies_bouldin"].idxmin(), "k"])


def test_the_report_plot_draws_three_panels_of_the_images():
    from pipeline.plots import report_plot_png

    data = report_plot_png(
        np.array([3.0, 4, 4, np.nan]),
        np.array([0.2, 0.5, 0.6, np.nan]),
        np.array([1.0, 2.0, 1.5, np.nan]),
        min_strength=0.45,
    )
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (900, 280)
    assert len(data) < 150_000
