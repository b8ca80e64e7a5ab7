"""Tests of pipeline.plots: the elbow plot is a small valid PNG."""

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
    assert len(data) < 50_000
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.format == "PNG"
        # 4.2 x 2.6 inches at 80 dpi.
        assert image.size == (336, 208)
        pixels = np.asarray(image.convert("RGB"))
    assert np.unique(pixels.reshape(-1, 3), axis=0).shape[0] > 10  # something was drawn


def test_elbow_plot_when_chosen_k_is_not_in_the_table(sweep_result):
    """A capped choice can name a K that the table does not list; the plot still renders."""
    table = sweep_result.table[sweep_result.table["k"] != 5]
    choice = choose_k(sweep_result.k_values, sweep_result.wcss, SegmentSettings(k_override=5))
    data = elbow_plot_png(table, choice)
    assert data.startswith(PNG_MAGIC)
    assert len(data) < 50_000


def test_elbow_plot_is_deterministic(sweep_result):
    choice = choose_k(sweep_result.k_values, sweep_result.wcss, SegmentSettings())
    assert elbow_plot_png(sweep_result.table, choice) == elbow_plot_png(sweep_result.table, choice)
