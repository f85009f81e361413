"""Metrics against brute-force definitions on random data with ties."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from training import metrics


def _brute_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.fixture
def sample() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 300)
    # Rounded scores force many ties, the case a naive sort-based AUC gets wrong.
    s = np.round(np.clip(0.3 * y + rng.random(300) * 0.7, 0, 1), 1)
    users = rng.integers(0, 12, 300).astype(str)
    return y, s, users


def test_auc_matches_pairwise_count_with_ties(sample) -> None:
    y, s, _ = sample
    assert metrics.auc(y, s) == pytest.approx(_brute_auc(y, s), abs=1e-12)
    assert metrics.auc(y, -s) == pytest.approx(1 - _brute_auc(y, s), abs=1e-12)


def test_auc_single_class_is_nan() -> None:
    assert np.isnan(metrics.auc(np.ones(5), np.arange(5.0)))


def test_gauc_is_impression_weighted_mean_of_user_aucs(sample) -> None:
    y, s, users = sample
    total = weight = 0.0
    for u in np.unique(users):
        m = users == u
        if 0 < y[m].sum() < m.sum():
            total += _brute_auc(y[m], s[m]) * m.sum()
            weight += m.sum()
    assert metrics.gauc(y, s, users) == pytest.approx(total / weight, abs=1e-12)


def test_logloss_pcoc_ece_against_definitions(sample) -> None:
    y, s, _ = sample
    # Shifted off the bin edges so the hand-binned ECE is not at the mercy of float rounding.
    p = np.clip(s, 0.05, 0.95) + 0.013
    expected_ll = -np.mean([np.log(pi) if yi else np.log(1 - pi) for yi, pi in zip(y, p, strict=True)])
    assert metrics.logloss(y, p) == pytest.approx(expected_ll, rel=1e-9)
    assert metrics.pcoc(y, p) == pytest.approx(p.sum() / y.sum())
    # ECE by hand: bins of width 0.1, |mean p - mean y| weighted by count.
    ece = 0.0
    for b in range(10):
        lo, hi = b / 10, (b + 1) / 10
        m = (p >= lo) & ((p < hi) if b < 9 else (p <= hi))
        if m.any():
            ece += m.sum() / len(p) * abs(p[m].mean() - y[m].mean())
    assert metrics.ece(y, p) == pytest.approx(ece, abs=1e-12)


def test_perfectly_calibrated_predictions_have_zero_ece() -> None:
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    p = np.array([0.25, 0.25, 0.25, 0.25, 0.75, 0.75, 0.75, 0.75])
    assert metrics.ece(y, p) == pytest.approx(0.0)
    assert metrics.pcoc(y, p) == pytest.approx(1.0)


def test_evaluate_predictions_reports_oracle_gap_and_rejects_bad_input(sample) -> None:
    y, s, users = sample
    p_click = np.clip(0.1 + 0.8 * y * 0.5 + 0.01 * s, 0, 1)
    out = metrics.evaluate_predictions(y, np.clip(s, 0.01, 0.99), users, p_click)
    assert out["oracle_gap"] == pytest.approx(out["oracle_auc"] - out["auc"])
    assert {"auc", "gauc", "logloss", "pcoc", "ece"} <= out.keys()
    with pytest.raises(ValueError, match="NaN"):
        metrics.evaluate_predictions(y, np.full(len(y), np.nan))
    with pytest.raises(ValueError, match="1-D"):
        metrics.evaluate_predictions(y, s[:10])


def test_request_gauc_groups_by_request_and_ignores_what_is_constant_in_a_request() -> None:
    rng = np.random.default_rng(3)
    requests = np.repeat(np.arange(40), 5).astype(str)
    users = np.repeat(np.arange(8), 25).astype(str)  # five requests per user
    y = rng.integers(0, 2, 200)
    within = 0.4 * y + rng.random(200)  # candidate-level signal
    offset = np.repeat(rng.random(40) * 5, 5)  # a per-request shift (say, the hour) that ranks nothing
    s = within + offset
    total = weight = 0.0
    for r in np.unique(requests):
        m = requests == r
        if 0 < y[m].sum() < m.sum():
            total += _brute_auc(y[m], s[m]) * m.sum()
            weight += m.sum()
    out = metrics.evaluate_predictions(y, 1 / (1 + np.exp(-s)), users, requests=requests)
    assert out["request_gauc"] == pytest.approx(total / weight, abs=1e-9)
    # The per-request shift cannot change a within-request ranking, but it does mix the user's requests.
    assert metrics.gauc(y, within, requests) == pytest.approx(out["request_gauc"], abs=1e-12)
    assert out["gauc"] != pytest.approx(metrics.gauc(y, within, users), abs=1e-3)
    assert np.isnan(metrics.gauc(y, s, np.arange(200)))  # one impression per request: undefined,
    assert "request_gauc" not in metrics.evaluate_predictions(y, s / 6, requests=np.arange(200))  # so absent


def _two_models(n: int = 2000, seeds: int = 3):
    """A ranks by a noisy copy of the label; B is A with its signal weakened, per seed."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, n)
    requests = rng.integers(0, 200, n)
    strong = [y + rng.normal(0, 1.0, n) for _ in range(seeds)]
    weak = [0.3 * y + rng.normal(0, 1.0, n) for _ in range(seeds)]
    return y, requests, strong, weak


def test_paired_bootstrap_point_is_the_mean_per_seed_difference_and_resolves_a_real_gap() -> None:
    y, requests, strong, weak = _two_models()
    grouped = metrics.paired_bootstrap(y, strong, weak, requests, rounds=300)
    expected = np.mean([metrics.gauc(y, a, requests) - metrics.gauc(y, b, requests)
                        for a, b in zip(strong, weak, strict=True)])
    assert grouped.mean == pytest.approx(expected, abs=1e-12)
    assert grouped.unit == "group" and grouped.resolved and 0 < grouped.low < grouped.mean < grouped.high
    rows = metrics.paired_bootstrap(y, strong, weak, rounds=300)
    assert rows.mean == pytest.approx(np.mean([metrics.auc(y, a) - metrics.auc(y, b)
                                               for a, b in zip(strong, weak, strict=True)]), abs=1e-12)
    assert rows.unit == "row" and rows.resolved and rows.low > 0


def test_paired_bootstrap_cannot_tell_a_model_from_itself_or_from_an_equally_good_one() -> None:
    y, requests, strong, _ = _two_models()
    same = metrics.paired_bootstrap(y, strong, strong, requests, rounds=200)
    assert (same.mean, same.low, same.high, same.resolved) == (0.0, 0.0, 0.0, False)
    rng = np.random.default_rng(5)
    jittered = [y + rng.normal(0, 1.0, len(y)) for _ in strong]  # as strong, with its own noise
    for groups in (requests, None):
        tie = metrics.paired_bootstrap(y, strong, jittered, groups, rounds=200)
        assert tie.low < 0 < tie.high and not tie.resolved
    # The resampling is seeded: the same call gives the same interval.
    assert metrics.paired_bootstrap(y, strong, jittered, requests, rounds=200) == \
        metrics.paired_bootstrap(y, strong, jittered, requests, rounds=200)
    with pytest.raises(ValueError, match="one per seed"):
        metrics.paired_bootstrap(y, strong, jittered[:2], requests)
    with pytest.raises(ValueError, match="undefined"):
        metrics.paired_bootstrap(y, strong, jittered, np.arange(len(y)))


def test_paired_bootstrap_interval_holds_the_seeds_spread() -> None:
    """Two seeds where A is clearly ahead and one where it is clearly behind: each seed alone is resolved
    by the test window, but the mean over such seeds is not a difference one can rely on."""
    y, requests, strong, weak = _two_models()
    a, b = [strong[0], strong[1], weak[2]], [weak[0], weak[1], strong[2]]
    for s in range(3):
        assert metrics.paired_bootstrap(y, a[s:s + 1], b[s:s + 1], requests, rounds=200).resolved
    mixed = metrics.paired_bootstrap(y, a, b, requests, rounds=400)
    assert mixed.mean > 0 and mixed.low < 0 < mixed.high and not mixed.resolved
