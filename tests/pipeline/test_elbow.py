"""Tests of pipeline.elbow: hand-made curves, kneed's published cases, synthetic scenes."""

from __future__ import annotations

import itertools
import json
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from kneed import KneeLocator
from kneed.data_generator import DataGenerator

from pipeline.elbow import ElbowChoice, choose_k, kneedle_knee, log_slope_elbow
from pipeline.segment import segment_image
from pipeline.settings import SegmentSettings
from pipeline.synthetic import gradient_image, noise_image, region_scene

DEFAULT = SegmentSettings()
KS = np.array([1, *range(2, 13)])  # the default sweep: K=1, then 2..12


def sharp_curve(true_k: int, ks: np.ndarray = KS) -> np.ndarray:
    """WCSS that halves per K until ``true_k``, drops 5x at it, then declines by 1% per K."""
    w = []
    for k in ks:
        if k < true_k:
            w.append(1000.0 * 0.5 ** (k - 1))
        else:
            at_k = 1000.0 * 0.5 ** (true_k - 2) / 5
            w.append(at_k * 0.99 ** (k - true_k))
    return np.array(w)


def power_law(a: float, ks: np.ndarray = KS) -> np.ndarray:
    return 1000.0 * ks.astype(np.float64) ** -a


# --- hand-made curves ------------------------------------------------------------------------


@pytest.mark.parametrize("true_k", range(2, 12))
def test_sharp_drop_then_flat_gives_that_k(true_k):
    choice = choose_k(KS, sharp_curve(true_k), DEFAULT)
    assert choice.k == true_k
    assert choice.reason == "elbow"
    assert choice.rule == "elbow"
    assert choice.method == "log-slope"
    assert choice.elbow_k == true_k
    assert choice.strength > 0.9
    assert not choice.capped


@pytest.mark.parametrize("a", [0.3, 0.7, 1.0, 1.5, 2.5])
def test_power_law_has_no_clear_elbow(a):
    wcss = power_law(a)
    choice = choose_k(KS, wcss, DEFAULT)
    assert choice.reason == "no_clear_elbow"
    assert choice.strength < DEFAULT.min_strength
    assert choice.strength == pytest.approx(0.0, abs=1e-9)
    assert choice.rule == "fallback-variance"
    # The variance fallback: the smallest K in range explaining 80% of the variance.
    explained = 1 - wcss / wcss[0]
    in_range = np.isin(KS, np.arange(DEFAULT.k_min, DEFAULT.k_max + 1))
    reaching = KS[in_range & (explained >= DEFAULT.variance_target)]
    expected = int(reaching[0]) if reaching.size else DEFAULT.k_max
    assert choice.k == expected
    if a == 1.0:  # 1 - 1/K >= 0.8  <=>  K >= 5
        assert choice.k == 5


def test_power_law_top_of_range_when_variance_never_reached():
    choice = choose_k(KS, power_law(0.05), DEFAULT)
    assert choice.reason == "no_clear_elbow"
    assert choice.rule == "fallback-variance"
    assert choice.k == DEFAULT.k_max
    assert "no K explains" in choice.detail


@pytest.mark.parametrize(
    ("target", "expected"), [(0.5, 2), (0.8, 3), (0.9, 4), (0.95, 5), (0.985, 9)]
)
def test_variance_fallback_picks_smallest_k_reaching_target(target, expected):
    """WCSS = K^-2 explains 1 - 1/K^2 of the variance: 0.75, 0.89, 0.94, 0.96, ... 0.988 at 9."""
    settings = SegmentSettings(variance_target=target)
    choice = choose_k(KS, power_law(2.0), settings)
    assert choice.reason == "no_clear_elbow"
    assert choice.k == expected
    assert choice.rule == "fallback-variance"
    assert f"smallest K explaining {target:.0%}" in choice.detail


def weak_kink(at: int = 6) -> np.ndarray:
    """A power law whose log-log slope eases from 1.0 to 0.7 at K=``at``: a weak elbow."""
    logs = [0.0]
    for lo, hi in itertools.pairwise(KS):
        slope = 1.0 if hi <= at else 0.7
        logs.append(logs[-1] - slope * np.log(hi / lo))
    return 1000.0 * np.exp(logs)


def test_weak_elbow_strength_and_candidate():
    k, strength = log_slope_elbow(KS, weak_kink(6), (KS >= 2) & (KS <= 12))
    assert k == 6
    assert strength == pytest.approx(0.3, abs=1e-9)


def test_fallback_knee_keeps_the_weak_elbow():
    settings = SegmentSettings(fallback="knee")
    choice = choose_k(KS, weak_kink(6), settings)
    assert choice.k == 6
    assert choice.elbow_k == 6
    assert choice.reason == "no_clear_elbow"
    assert choice.rule == "fallback-knee"
    assert choice.strength == pytest.approx(0.3, abs=1e-9)
    # With the default variance fallback the same curve goes to the variance rule.
    default = choose_k(KS, weak_kink(6), DEFAULT)
    assert default.rule == "fallback-variance"
    assert default.elbow_k == 6
    # A lower threshold accepts the weak elbow as an elbow.
    lenient = choose_k(KS, weak_kink(6), SegmentSettings(min_strength=0.25))
    assert (lenient.k, lenient.reason, lenient.rule) == (6, "elbow", "elbow")


def test_wcss_reaching_zero_is_a_perfect_elbow():
    wcss = np.array([100.0, 50, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    choice = choose_k(KS, wcss, DEFAULT)
    assert choice.k == 4
    assert choice.reason == "elbow"
    assert choice.rule == "wcss-zero"
    assert choice.strength == 1.0
    assert np.isfinite(choice.curve).all()


def test_override():
    choice = choose_k(KS, power_law(1.0), SegmentSettings(k_override=7))
    assert (choice.k, choice.reason, choice.rule, choice.method) == (
        7,
        "override",
        "override",
        "override",
    )
    assert choice.strength == 1.0
    assert choice.elbow_k is None


def test_override_capped_at_the_distinct_colours():
    ks = np.array([1, 2, 3, 4, 5])
    wcss = np.array([100.0, 10, 0, 0, 0])
    choice = choose_k(ks, wcss, SegmentSettings(k_override=5), n_distinct=3)
    assert choice.k == 3
    assert choice.reason == "override"
    assert "capped from 5" in choice.detail


def test_capped_image_with_fewer_colours_than_k_min():
    ks = np.array([1, 2, 3, 4])
    wcss = np.array([0.0, 0, 0, 0])
    choice = choose_k(ks, wcss, SegmentSettings(k_min=3, k_max=4), n_distinct=1)
    assert choice.capped
    assert choice.k == 1
    assert choice.rule == "wcss-zero"
    assert choice.reason == "elbow"


def test_capped_within_range_stops_at_the_distinct_colours():
    wcss = np.array([900.0, 300, 120, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    choice = choose_k(KS, wcss, DEFAULT, n_distinct=4)
    assert not choice.capped
    assert choice.k == 4
    assert choice.rule == "wcss-zero"


def test_curve_is_normalised_log_wcss():
    wcss = power_law(1.0)
    choice = choose_k(KS, wcss, DEFAULT)
    curve = np.array(choice.curve)
    assert curve[0] == pytest.approx(1.0)
    assert curve.min() == pytest.approx(0.0)
    log = np.log(wcss)
    np.testing.assert_allclose(curve, (log - log.min()) / (log[0] - log.min()))
    assert choice.k_values == tuple(int(k) for k in KS)


@pytest.mark.parametrize(
    ("ks", "wcss", "method", "match"),
    [
        ([], [], "log-slope", "non-empty"),
        ([1, 2, 3], [3.0, 2.0], "log-slope", "aligned"),
        ([1, 2, 3], [3.0, 2.0, 1.0], "silhouette", "unknown elbow method"),
    ],
)
def test_choose_k_refuses_bad_input(ks, wcss, method, match):
    with pytest.raises(ValueError, match=match):
        choose_k(ks, wcss, DEFAULT, method=method)


def test_kneedle_on_a_flat_curve_is_no_clear_elbow_without_warnings():
    """A curve with no bend at all: kneed finds no knee; that is a value, not a warning."""
    choice = choose_k(KS, np.full(KS.size, 5.0), DEFAULT, method="kneedle")
    assert choice.reason == "no_clear_elbow"
    assert choice.strength == 0.0


def test_kneedle_on_a_straight_line_is_no_clear_elbow():
    choice = choose_k(KS, np.linspace(12.0, 1.0, KS.size), DEFAULT, method="kneedle")
    assert choice.reason == "no_clear_elbow"
    assert choice.elbow_k is None


@st.composite
def curves(draw):
    """A positive non-increasing WCSS curve over K=1..12 and settings for it."""
    ratios = draw(st.lists(st.floats(0.01, 1.0), min_size=11, max_size=11))
    wcss = 1000.0 * np.cumprod([1.0, *ratios])
    k_min = draw(st.integers(1, 11))
    k_max = draw(st.integers(max(2, k_min), 12))
    settings = SegmentSettings(
        k_min=k_min,
        k_max=k_max,
        min_strength=draw(st.floats(0.0, 1.0)),
        fallback=draw(st.sampled_from(["variance", "knee"])),
        variance_target=draw(st.floats(0.05, 0.95)),
    )
    return wcss, settings


@hsettings(max_examples=200, deadline=None)
@given(case=curves())
def test_choose_k_properties(case):
    wcss, settings = case
    choice = choose_k(KS, wcss, settings)
    assert settings.k_min <= choice.k <= settings.k_max
    assert 0.0 <= choice.strength <= 1.0
    assert (choice.reason, choice.rule) in {
        ("elbow", "elbow"),
        ("elbow", "wcss-zero"),
        ("no_clear_elbow", "fallback-variance"),
        ("no_clear_elbow", "fallback-knee"),
    }
    if choice.rule == "elbow":
        assert choice.strength >= settings.min_strength
        assert choice.k == choice.elbow_k
    if choice.reason == "no_clear_elbow":
        assert choice.strength < settings.min_strength
    if choice.rule == "fallback-variance":
        explained = 1 - wcss / wcss[0]
        in_range = np.isin(KS, np.arange(settings.k_min, settings.k_max + 1))
        reaching = KS[in_range & (explained >= settings.variance_target)]
        assert choice.k == (int(reaching[0]) if reaching.size else settings.k_max)
    curve = np.array(choice.curve)
    assert curve.shape == KS.shape
    assert ((curve >= 0) & (curve <= 1)).all()
    assert ElbowChoice.from_dict(json.loads(json.dumps(choice.to_dict()))) == choice


# --- ElbowChoice serialisation ---------------------------------------------------------------


@pytest.mark.parametrize(
    "wcss", [sharp_curve(5), power_law(1.0), weak_kink(6)], ids=["sharp", "power", "weak"]
)
def test_elbow_choice_dict_round_trip_and_json(wcss):
    choice = choose_k(KS, wcss, DEFAULT)
    data = choice.to_dict()
    text = json.dumps(data)
    back = ElbowChoice.from_dict(json.loads(text))
    assert back == choice
    assert isinstance(back.k_values, tuple) and isinstance(back.curve, tuple)
    assert set(data) == {
        "k", "method", "strength", "reason", "rule", "detail",
        "elbow_k", "capped", "k_values", "curve",
    }  # fmt: skip


def test_elbow_choice_is_frozen():
    choice = choose_k(KS, sharp_curve(3), DEFAULT)
    with pytest.raises(AttributeError):
        choice.k = 4  # type: ignore[misc]


# --- the Kneedle method on kneed's published cases -------------------------------------------


def test_kneedle_on_kneed_convex_decreasing_example():
    """kneed's ``convex_decreasing`` sample (tests/test_sample.py): knee at x=2."""
    x, y = DataGenerator.convex_decreasing()
    k, strength = kneedle_knee(np.asarray(x), np.asarray(y), np.ones(len(x), dtype=bool))
    assert k == 2
    assert 0 < strength <= 1


def test_kneedle_on_kneedle_paper_figure2():
    """Figure 2 of Satopää et al. (2011), kneed's ``figure2``: knee at x=0.22 (the third point).

    The paper's curve ``y = 5 - 1/(x + 0.1)`` is concave increasing; as a WCSS-like
    convex decreasing curve it is ``1/(x + 0.1)``, whose knee is at the same point.
    Our K values are the indices 0..9 of ``x = linspace(0, 1, 10)``.
    """
    x, y = DataGenerator.figure2()
    reference = KneeLocator(x, y, S=1.0, curve="concave")
    assert reference.knee == pytest.approx(0.22, rel=0.05)
    wcss = 5 - np.asarray(y)  # = 1 / (x + 0.1)
    k, _ = kneedle_knee(np.arange(10), wcss, np.ones(10, dtype=bool))
    assert x[k] == pytest.approx(reference.knee)
    assert k == 2


def test_kneedle_on_kneed_flat_maxima_example():
    """kneed's ``test_flat_maxima`` curve: with S=1 the global maximum, x=8."""
    y = [
        1, 0.787701317715959, 0.7437774524158126, 0.6559297218155198, 0.5065885797950219,
        0.36749633967789164, 0.2547584187408492, 0.16251830161054173, 0.10395314787701318,
        0.06734992679355783, 0.043923865300146414, 0.027818448023426062, 0.01903367496339678,
        0.013177159590043924, 0.010248901903367497, 0.007320644216691069, 0.005856515373352855,
        0.004392386530014641,
    ]  # fmt: skip
    k, _ = kneedle_knee(np.arange(18), np.array(y), np.ones(18, dtype=bool))
    assert k == 8


def test_kneedle_on_kneed_bumpy_example():
    """kneed's ``bumpy`` sample, convex decreasing with interp1d: knee at x=26."""
    x, y = DataGenerator.bumpy()
    k, _ = kneedle_knee(np.asarray(x), np.asarray(y), np.ones(len(x), dtype=bool))
    assert k == 26


def test_kneedle_knee_outside_candidates_is_none():
    x, y = DataGenerator.convex_decreasing()
    candidates = np.ones(len(x), dtype=bool)
    candidates[2] = False
    assert kneedle_knee(np.asarray(x), np.asarray(y), candidates) == (None, 0.0)


def test_choose_k_kneedle_method_on_figure2():
    _, y = DataGenerator.figure2()
    ks = np.arange(1, 11)  # K = index + 1
    choice = choose_k(ks, 5 - np.asarray(y), DEFAULT, method="kneedle")
    assert choice.method == "kneedle"
    assert choice.elbow_k == 3
    assert 0 <= choice.strength <= 1


# --- synthetic scenes: the acceptance test ---------------------------------------------------

SCENE_KS = range(2, 11)
SCENE_SEEDS = range(4)


@pytest.fixture(scope="module")
def scene_results():
    """The full engine on 36 region scenes (true K = 2..10, 4 seeds each), default settings."""
    started = time.perf_counter()
    rows = []
    for k in SCENE_KS:
        for seed in SCENE_SEEDS:
            rgb, truth = region_scene(k, seed=seed)
            assert np.unique(truth).size == k
            result = segment_image(rgb, DEFAULT)
            kneedle = choose_k(result.sweep.k_values, result.sweep.wcss, DEFAULT, method="kneedle")
            rows.append((k, seed, result.choice, kneedle))
    return rows, time.perf_counter() - started


@pytest.mark.slow
def test_elbow_recovers_true_k_on_region_scenes(scene_results):
    rows, seconds = scene_results
    assert len(rows) == 36
    hits = [(k, s) for k, s, choice, _ in rows if choice.k == k and choice.reason == "elbow"]
    misses = [
        f"K={k} seed={s}: chose {c.k} ({c.reason}, strength {c.strength:.2f})"
        for k, s, c, _ in rows
        if not (c.k == k and c.reason == "elbow")
    ]
    assert len(hits) >= 0.9 * len(rows), f"{len(hits)}/{len(rows)} recovered; misses: {misses}"
    assert seconds < 60, f"36 scenes took {seconds:.1f} s"


@pytest.mark.slow
def test_plain_kneedle_on_the_raw_curve_does_markedly_worse(scene_results):
    """Why the log-slope reading exists: Kneedle on raw WCSS undershoots for K >= 4."""
    rows, _ = scene_results
    log_slope_hits = sum(c.k == k and c.reason == "elbow" for k, _, c, _ in rows)
    kneedle_hits = sum(kn.elbow_k == k for k, _, _, kn in rows)
    assert kneedle_hits <= len(rows) // 2
    assert log_slope_hits - kneedle_hits >= 0.4 * len(rows)
    # Kneedle's answers stay small whatever the true K.
    large = [kn.elbow_k for k, _, _, kn in rows if k >= 7]
    assert max(large) <= 6


@pytest.mark.slow
@pytest.mark.parametrize("make", [gradient_image, noise_image], ids=["gradient", "noise"])
@pytest.mark.parametrize("seed", range(3))
def test_smooth_and_noisy_images_have_no_clear_elbow(make, seed):
    result = segment_image(make(seed=seed), DEFAULT)
    assert result.choice.reason == "no_clear_elbow"
    assert result.choice.strength < DEFAULT.min_strength
    assert result.choice.rule == "fallback-variance"
