"""Tests of pipeline.regions (with pipeline.components and pipeline.merging) on generated images."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.color import rgb2lab
from skimage.measure import label as connected

from pipeline.components import (
    adjacent_pairs,
    component_sums,
    label_extents,
    split_components,
)
from pipeline.errors import SettingsError
from pipeline.merging import cut, fold_small, ward_merges
from pipeline.regions import REGION_COLUMNS, find_regions, region_hierarchy
from pipeline.settings import RegionSettings


def blocks(noise: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 60x80 image of six 20x... blocks; blocks 0 and 5 share a colour (one cluster).

    Returns the image and a cluster map in which same-coloured blocks share a label.
    """
    colours = np.array(
        [[200, 30, 30], [30, 200, 30], [30, 30, 200], [220, 220, 40], [40, 200, 200]],
        dtype=np.float64,
    )
    layout = np.array([[0, 1, 2, 3], [4, 1, 3, 0]])
    truth = np.kron(layout, np.ones((30, 20), dtype=np.int64))
    img = colours[truth]
    if noise:
        img = img + np.random.default_rng(seed).normal(0, noise, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), truth


def speckled(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two halves with salt specks of the other half's colour (clusters = colours)."""
    rng = np.random.default_rng(seed)
    clusters = np.zeros((64, 96), dtype=np.int64)
    clusters[:, 48:] = 1
    flip = rng.random(clusters.shape) < 0.03
    clusters[flip] = 1 - clusters[flip]
    img = np.array([[250, 240, 230], [20, 40, 90]], dtype=np.uint8)[clusters]
    return img, clusters


def assert_valid(regions, shape) -> None:
    labels = regions.labels
    assert labels.shape == shape
    assert labels.dtype == np.uint8
    assert np.array_equal(np.unique(labels), np.arange(regions.n_regions))
    for r in range(regions.n_regions):
        assert connected(labels == r, connectivity=1).max() == 1, f"region {r} split"
    _, first = np.unique(labels.ravel(), return_index=True)
    assert np.all(np.diff(first) > 0), "regions are not numbered in raster order"


def test_split_components_numbers_pieces_in_raster_order():
    clusters = np.array([[0, 1, 0], [0, 1, 1], [2, 2, 0]])
    components, n = split_components(clusters)
    assert n == 5
    assert components.dtype == np.int32
    assert components.tolist() == [[0, 1, 2], [0, 1, 1], [3, 3, 4]]


def _brute_force_pairs(components: np.ndarray) -> list[list[int]]:
    pairs = set()
    for a, b in ((components[:, :-1], components[:, 1:]), (components[:-1], components[1:])):
        differ = a != b
        pairs |= {(min(x, y), max(x, y)) for x, y in zip(a[differ], b[differ], strict=True)}
    return [list(p) for p in sorted(pairs)]


@pytest.mark.parametrize("seed", range(6))
def test_strips_and_blocks_give_the_whole_image_labelling(monkeypatch, seed):
    """split_components labels strips and joins the pieces across the seams; adjacent_pairs
    works in overlapping row blocks: both must agree with one pass over the whole map,
    including pieces that wind across several seams and one-row strips."""
    import pipeline.components

    rng = np.random.default_rng(seed)
    height, width = rng.integers(5, 70, size=2)
    clusters = rng.integers(0, 3, size=(height, width))
    if seed % 2:  # long vertical runs, so pieces cross many seams
        clusters = np.repeat(clusters[: height // 4 + 1], 4, axis=0)[:height]
    monkeypatch.setattr(pipeline.components, "_STRIP", int(width * rng.integers(1, 6)))
    monkeypatch.setattr(pipeline.components, "_BLOCK", int(width * rng.integers(2, 6)))
    components, n = split_components(clusters)
    whole, m = connected(clusters, background=-1, connectivity=1, return_num=True)
    assert n == m
    np.testing.assert_array_equal(components, whole - 1)
    assert adjacent_pairs(components, n).tolist() == _brute_force_pairs(components)


def test_adjacent_pairs_are_the_touching_pieces():
    components = np.array([[0, 1, 2], [0, 1, 1], [3, 3, 4]], dtype=np.int32)
    expected = [[0, 1], [0, 3], [1, 2], [1, 3], [1, 4], [3, 4]]
    assert adjacent_pairs(components, 5).tolist() == expected


@pytest.mark.parametrize("blocks", [False, True], ids=["one-block", "two-threads"])
def test_component_sums_match_direct_sums(rgb_pattern, monkeypatch, blocks):
    import pipeline.components

    if blocks:  # many row blocks, summed on two threads
        monkeypatch.setattr(pipeline.components, "_BLOCK", 1)
    rgb = rgb_pattern(30, 41)
    clusters = (rgb[..., 0] // 64).astype(np.int64)
    components, n = split_components(clusters)
    values = rgb.reshape(-1, 3).astype(np.float64) ** 2
    index = np.arange(rgb.shape[0] * rgb.shape[1]).reshape(rgb.shape[:2])
    sums = component_sums(components, n, rgb, index, values)
    assert sums.values.shape == (n, 6)
    for c in range(n):
        inside = components == c
        assert sums.counts[c] == inside.sum()
        assert np.allclose(sums.values[c, :3], rgb[inside].sum(axis=0))
        assert np.allclose(sums.values[c, 3:], (rgb[inside].astype(float) ** 2).sum(axis=0))


@pytest.mark.parametrize("many", [False, True], ids=["histograms", "objects"])
def test_label_extents_match_direct_ones(rgb_pattern, monkeypatch, many):
    import pipeline.components

    if many:  # the path for many labels, taken when the histograms would be large
        monkeypatch.setattr(pipeline.components, "_BLOCK", 1)
    labels = (rgb_pattern(30, 41)[..., 1] // 40).astype(np.uint8)
    labels = np.unique(labels, return_inverse=True)[1].reshape(labels.shape)
    n = int(labels.max()) + 1
    centroids, boxes = label_extents(labels, n)
    for r in range(n):
        ys, xs = np.nonzero(labels == r)
        assert centroids[r] == pytest.approx([xs.mean(), ys.mean()])
        assert boxes[r].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_fold_small_sends_a_small_region_to_its_closest_neighbour():
    counts = np.array([100.0, 3.0, 100.0, 2.0])
    means = np.array([[0.0], [9.0], [10.0], [1.0]])
    pairs = np.array([[0, 1], [1, 2], [0, 3], [2, 3]])
    groups, m = fold_small(counts, means, pairs, floor=10)
    assert m == 2
    assert groups[1] == groups[2] and groups[3] == groups[0] and groups[0] != groups[2]


def test_fold_small_merges_a_chain_of_small_regions():
    counts = np.array([2.0, 2.0, 2.0, 50.0])
    means = np.array([[0.0], [0.5], [5.0], [6.0]])
    pairs = np.array([[0, 1], [1, 2], [2, 3]])
    groups, m = fold_small(counts, means, pairs, floor=10)
    assert m == 1 and set(groups.tolist()) == {0}


def test_ward_merges_cheapest_pair_first_with_ward_costs():
    counts = np.array([10.0, 10.0, 1.0, 30.0])
    means = np.array([[0.0], [1.0], [50.0], [100.0]])
    pairs = np.array([[0, 1], [1, 2], [2, 3]])
    seq = ward_merges(counts, means, pairs)
    assert seq.merged[0].tolist() == [0, 1]
    assert seq.costs[0] == pytest.approx(10 * 10 / 20 * 1.0)
    # The single pixel at 50 then joins the closer side by Ward's cost.
    to_left = 20 * 1 / 21 * (50 - 0.5) ** 2
    to_right = 30 * 1 / 31 * (100 - 50) ** 2
    assert seq.costs[1] == pytest.approx(min(to_left, to_right))
    assert seq.regions.tolist() == [3, 2, 1]
    groups, n = cut(seq, 2)
    assert n == 2 and groups.tolist() == [0, 0, 0, 1]


def test_ward_merges_stop_at_disconnected_parts():
    seq = ward_merges(np.ones(4), np.arange(4.0)[:, None], np.array([[0, 1], [2, 3]]))
    assert seq.costs.size == 2
    assert cut(seq, 2)[0].tolist() == [0, 0, 1, 1]


def test_regions_are_connected_contiguous_and_split_shared_clusters():
    rgb, clusters = blocks()
    regions = find_regions(rgb, clusters, RegionSettings(n_regions=8))
    assert_valid(regions, clusters.shape)
    # Seven blocks of five colours: cluster 0 and cluster 3 each form two regions.
    assert regions.n_components == 7
    assert regions.n_regions == 7
    assert regions.choice.rule == "override"
    for r in range(7):
        assert np.unique(clusters[regions.labels == r]).size == 1


def test_floor_is_respected(tmp_path):
    rgb, clusters = speckled()
    settings = RegionSettings(min_share=0.01, n_regions=100)
    regions = find_regions(rgb, clusters, settings)
    assert regions.n_components > 50
    assert_valid(regions, clusters.shape)
    counts = np.bincount(regions.labels.ravel())
    assert counts.min() >= 0.01 * clusters.size
    assert regions.n_regions == 2


def test_table_matches_the_label_map():
    rgb, clusters = blocks(noise=6.0)
    regions = find_regions(rgb, clusters)
    table = regions.table
    assert list(table.columns) == list(REGION_COLUMNS)
    assert table["region"].tolist() == list(range(regions.n_regions))
    lab = rgb2lab(rgb)
    y, x = np.mgrid[: rgb.shape[0], : rgb.shape[1]]
    for row in table.itertuples():
        inside = regions.labels == row.region
        assert row.pixel_count == inside.sum()
        assert row.share == pytest.approx(inside.mean())
        assert [row.mean_r, row.mean_g, row.mean_b] == pytest.approx(rgb[inside].mean(axis=0))
        assert [row.mean_lab_l, row.mean_lab_a, row.mean_lab_b] == pytest.approx(
            lab[inside].mean(axis=0)
        )
        centroid = [x[inside].mean(), y[inside].mean()]
        assert [row.centroid_x, row.centroid_y] == pytest.approx(centroid)
        ys, xs = np.nonzero(inside)
        assert (row.bbox_x0, row.bbox_y0) == (xs.min(), ys.min())
        assert (row.bbox_x1, row.bbox_y1) == (xs.max() + 1, ys.max() + 1)
        # The cluster of the region's largest connected piece of one cluster.
        pieces = connected(clusters, background=-1, connectivity=1)[inside]
        ids, sizes = np.unique(pieces, return_counts=True)
        largest = pieces == ids[np.argmax(sizes)]
        assert row.cluster == clusters[inside][largest][0]
    assert table["pixel_count"].sum() == clusters.size


def test_merge_curve_wcss_equals_the_within_region_sum_of_squares():
    rgb, clusters = blocks(noise=8.0, seed=3)
    hierarchy = region_hierarchy(rgb, clusters, RegionSettings(min_share=0.001))
    lab = rgb2lab(rgb).reshape(-1, 3)
    folded = hierarchy.folded_labels().ravel()
    curve = hierarchy.curve
    for step, n in enumerate(curve.regions):
        regions = hierarchy.groups(int(n))[folded]
        means = np.array([lab[regions == r].mean(axis=0) for r in range(n)])
        direct = ((lab - means[regions]) ** 2).sum()
        assert curve.wcss[step] == pytest.approx(direct, rel=1e-9)
    assert curve.wcss[-1] == pytest.approx(curve.total_ss, rel=1e-9)


def test_same_input_same_regions_and_inputs_untouched():
    rgb, clusters = blocks(noise=10.0, seed=1)
    rgb.setflags(write=False)
    clusters.setflags(write=False)
    first = find_regions(rgb, clusters)
    second = find_regions(rgb.copy(), clusters.copy())
    assert np.array_equal(first.labels, second.labels)
    assert first.table.equals(second.table)
    assert first.merge_table().equals(second.merge_table())
    assert first.choice == second.choice


def test_merge_table_marks_the_chosen_count():
    rgb, clusters = blocks(noise=4.0)
    regions = find_regions(rgb, clusters, RegionSettings(n_regions=3))
    table = regions.merge_table()
    assert table.loc[table["chosen"], "regions"].tolist() == [3]
    assert table["regions"].tolist() == list(range(regions.n_folded, 0, -1))
    assert np.all(np.diff(table["wcss"]) >= 0)
    assert np.allclose(np.diff(table["wcss"]), table["merge_cost"].iloc[:-1])
    assert np.isnan(table["merge_cost"].iloc[-1])


def test_one_colour_image_is_one_region():
    rgb = np.full((10, 12, 3), 77, dtype=np.uint8)
    regions = find_regions(rgb, np.zeros((10, 12), dtype=np.int64))
    assert regions.n_regions == 1 and regions.labels.max() == 0
    assert regions.merge_table()["regions"].tolist() == [1]
    assert regions.choice.rule == "no-merge"
    assert regions.table["pixel_count"].tolist() == [120]


def test_many_regions_use_sixteen_bits():
    rng = np.random.default_rng(0)
    clusters = np.kron(rng.permutation(400).reshape(20, 20), np.ones((5, 5), dtype=np.int64))
    rgb = np.stack([clusters % 256, clusters // 256 * 40, clusters % 7 * 30], -1).astype(np.uint8)
    regions = find_regions(rgb, clusters, RegionSettings(min_share=0.0001, n_regions=400))
    assert regions.n_regions == 400 and regions.labels.dtype == np.uint16


@pytest.mark.parametrize(
    ("rgb", "clusters", "message"),
    [
        (np.zeros((4, 4), np.uint8), np.zeros((4, 4), int), "(H, W, 3) uint8"),
        (np.zeros((4, 4, 3), np.float64), np.zeros((4, 4), int), "(H, W, 3) uint8"),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), int), "must match"),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4)), "integer labels"),
    ],
)
def test_bad_inputs_are_refused(rgb, clusters, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        find_regions(rgb, clusters)


def test_bad_settings_are_refused_before_any_work():
    rgb, clusters = blocks()
    with pytest.raises(SettingsError, match="min_share"):
        find_regions(rgb, clusters, RegionSettings(min_share=0.5))


@pytest.mark.parametrize("source", ["chosen", "finest"])
def test_image_regions_start_from_the_configured_clustering(photo, source):
    from pipeline.segment import image_regions, segment_image
    from pipeline.settings import SegmentSettings

    rgb = photo("coffee")
    settings = SegmentSettings()
    result = segment_image(rgb, settings)
    regions = image_regions(rgb, result, settings, RegionSettings(source=source))
    assert_valid(regions, rgb.shape[:2])
    first = connected(result.segmentation.labels, background=-1, connectivity=1).max()
    if source == "chosen":
        assert regions.n_components == first
    else:
        assert regions.n_components > first  # the finest K splits into more pieces
    assert 1 <= regions.n_regions <= regions.n_folded
    assert regions.table["share"].min() >= RegionSettings().min_share
