"""The simulator's world is really in its log: position bias, Zipf popularity, drift, learnable signal."""

from __future__ import annotations

import hashlib
import tracemalloc
from collections import Counter, defaultdict, deque
from pathlib import Path

import numpy as np
import pytest

from pipelines.events import validate_event
from pipelines.logfile import iter_records
from pipelines.simulator import SimulatorConfig, simulate

SMALL = SimulatorConfig(days=4, users=1_500, items=1_200, impressions=60_000, categories=20, seed=3)


@pytest.fixture(scope="module")
def small_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, list[dict]]:
    path = tmp_path_factory.mktemp("sim") / "log.jsonl"
    summary = simulate(SMALL, path)
    return path, summary, list(iter_records(path))


def _impressions_with_labels(records: list[dict]) -> tuple[list[dict], set[str]]:
    impressions = [r for r in records if r["type"] == "impression"]
    clicked = {r["impression_id"] for r in records if r["type"] == "click"}
    return impressions, clicked


def _exact_auc(p: np.ndarray, y: np.ndarray) -> float:
    order = np.argsort(p, kind="stable")
    ranks = np.empty(len(p))
    ranks[order] = np.arange(1, len(p) + 1)
    # Average ranks over ties.
    _, inverse, counts = np.unique(p, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]
    n_pos = y.sum()
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(y) - n_pos)))


def test_log_is_canonical_time_ordered_and_counts_match(small_log) -> None:
    _, summary, records = small_log
    impressions, clicked = _impressions_with_labels(records)
    assert len(impressions) == SMALL.impressions == summary.impressions
    assert len(records) - len(impressions) == summary.clicks == len(clicked)
    times = [r["event_time"] for r in records]
    assert times == sorted(times)
    for r in records[:2000]:
        validate_event(r)
        assert r["user_id"].isdigit() and r["item_id"].isdigit() and r["impression_id"].isdigit()
    assert {"category", "position", "hour", "device", "page", "p_click"} <= impressions[0].keys()
    assert len({r["impression_id"] for r in impressions}) == len(impressions)


def test_clicks_come_later_with_a_realistic_delay(small_log) -> None:
    _, _, records = small_log
    shown_at = {r["impression_id"]: r for r in records if r["type"] == "impression"}
    delays = []
    for r in records:
        if r["type"] == "click":
            imp = shown_at[r["impression_id"]]
            assert (r["user_id"], r["item_id"]) == (imp["user_id"], imp["item_id"])
            delays.append(r["event_time"] - imp["event_time"])
    delays = np.array(delays) / 1000
    assert delays.min() >= 1
    assert 5 < np.median(delays) < 300  # seconds to minutes
    beyond_window = (delays > 1800).mean()
    assert 0.005 < beyond_window < 0.1  # a few beyond the 30 min attribution window


def test_ctr_is_realistic_and_oracle_auc_is_exact_and_below_one(small_log) -> None:
    _, summary, records = small_log
    impressions, clicked = _impressions_with_labels(records)
    p = np.array([r["p_click"] for r in impressions])
    y = np.array([r["impression_id"] in clicked for r in impressions])
    assert 0.02 <= summary.ctr <= 0.10
    assert abs(p.mean() - y.mean()) < 0.005  # clicks are drawn from p_click
    assert 0.7 < summary.oracle_auc < 0.9
    assert summary.oracle_auc == pytest.approx(_exact_auc(p, y), abs=1e-4)
    logloss = -np.mean(y * np.log(p) + (~y) * np.log1p(-p))
    assert summary.oracle_logloss == pytest.approx(logloss, rel=1e-6)


def test_ctr_falls_with_position(small_log) -> None:
    _, _, records = small_log
    impressions, clicked = _impressions_with_labels(records)
    by_position: dict[int, list[bool]] = defaultdict(list)
    for r in impressions:
        by_position[r["position"]].append(r["impression_id"] in clicked)
    ctr = [np.mean(by_position[p]) for p in range(SMALL.max_positions)]
    top, middle, bottom = np.mean(ctr[0:2]), np.mean(ctr[3:6]), np.mean(ctr[7:10])
    assert top > middle > bottom
    assert top > 1.8 * bottom


def test_item_popularity_is_heavy_tailed(small_log) -> None:
    _, _, records = small_log
    counts = np.array(sorted(Counter(r["item_id"] for r in records if r["type"] == "impression").values(),
                             reverse=True), dtype=float)
    top_decile_share = counts[: len(counts) // 10].sum() / counts.sum()
    assert top_decile_share > 0.5  # a uniform catalogue would give 0.1
    ranks = np.arange(1, 101)
    slope = np.polyfit(np.log(ranks), np.log(counts[:100]), 1)[0]
    assert slope < -0.5  # Zipf: a straight, steep line on log-log axes


def _category_mix_shift(records: list[dict]) -> float:
    """Mean total-variation distance between a user's first-day and last-day clicked-category mix."""
    day_of = lambda t: (t - records[0]["event_time"]) // 86_400_000  # noqa: E731
    category = {r["impression_id"]: r["category"] for r in records if r["type"] == "impression"}
    mix: dict[tuple[str, int], Counter] = defaultdict(Counter)
    for r in records:
        if r["type"] == "impression":
            mix[(r["user_id"], day_of(r["event_time"]))][category[r["impression_id"]]] += 1
    last = SMALL.days - 1
    distances = []
    for (user, day), first in mix.items():
        if day != 0 or (user, last) not in mix:
            continue
        a, b = first, mix[(user, last)]
        na, nb = sum(a.values()), sum(b.values())
        if na >= 20 and nb >= 20:
            distances.append(0.5 * sum(abs(a[c] / na - b[c] / nb) for c in set(a) | set(b)))
    assert len(distances) >= 30
    return float(np.mean(distances))


def test_users_category_mix_drifts_across_days(small_log, tmp_path: Path) -> None:
    _, _, records = small_log
    still = tmp_path / "still.jsonl"
    simulate(SimulatorConfig(**{**SMALL.__dict__, "daily_drift": 0.0}), still)
    drifting, static = _category_mix_shift(records), _category_mix_shift(list(iter_records(still)))
    assert drifting > static + 0.1


def test_recent_clicked_categories_predict_clicks(small_log) -> None:
    """The sequence signal: an item whose category the user clicked recently is clicked more often."""
    _, _, records = small_log
    category = {}
    recent: dict[str, deque] = defaultdict(lambda: deque(maxlen=5))
    matched, unmatched = [], []
    clicked = {r["impression_id"] for r in records if r["type"] == "click"}
    for r in records:
        if r["type"] == "impression":
            category[r["impression_id"]] = r["category"]
            if recent[r["user_id"]]:
                target = matched if r["category"] in recent[r["user_id"]] else unmatched
                target.append(r["impression_id"] in clicked)
        else:
            recent[r["user_id"]].append(category[r["impression_id"]])
    assert np.mean(matched) > 1.5 * np.mean(unmatched)


def test_new_users_and_items_keep_appearing(small_log) -> None:
    _, _, records = small_log
    start = records[0]["event_time"]
    first_day: dict[tuple[str, str], int] = {}
    for r in records:
        if r["type"] == "impression":
            for kind in ("user_id", "item_id"):
                first_day.setdefault((kind, r[kind]), (r["event_time"] - start) // 86_400_000)
    for kind in ("user_id", "item_id"):
        later = {d for (k, _), d in first_day.items() if k == kind and d > 0}
        assert {1, 2, 3} <= later


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_deterministic_under_a_seed(tmp_path: Path) -> None:
    config = SimulatorConfig(days=2, users=200, items=150, impressions=5_000, categories=8, seed=11)
    simulate(config, tmp_path / "a.jsonl")
    simulate(config, tmp_path / "b.jsonl")
    simulate(SimulatorConfig(**{**config.__dict__, "seed": 12}), tmp_path / "c.jsonl")
    assert _sha(tmp_path / "a.jsonl") == _sha(tmp_path / "b.jsonl") != _sha(tmp_path / "c.jsonl")
    simulate(config, tmp_path / "a.parquet")
    assert list(iter_records(tmp_path / "a.parquet")) == list(iter_records(tmp_path / "a.jsonl"))


def _peak_bytes(config: SimulatorConfig, path: Path) -> tuple[int, object]:
    tracemalloc.start()
    try:
        summary = simulate(config, path)
        return tracemalloc.get_traced_memory()[1], summary
    finally:
        tracemalloc.stop()


def test_streams_in_bounded_chunks(tmp_path: Path) -> None:
    base = dict(days=2, users=500, items=400, categories=10, seed=5, chunk_rows=2_000)
    small_peak, small = _peak_bytes(SimulatorConfig(**base, impressions=30_000), tmp_path / "s.jsonl")
    big_peak, big = _peak_bytes(SimulatorConfig(**base, impressions=120_000), tmp_path / "b.jsonl")
    assert small.max_chunk_impressions <= 2_000 and big.max_chunk_impressions <= 2_000
    assert big.chunks >= 120_000 // 2_000
    # Memory follows the chunk, not the log: 4x the log, about the same peak, far below the log's size.
    assert big_peak < 1.5 * small_peak
    assert big_peak < (tmp_path / "b.jsonl").stat().st_size / 3
    records = list(iter_records(tmp_path / "b.jsonl"))
    assert [r["event_time"] for r in records] == sorted(r["event_time"] for r in records)
    assert sum(r["type"] == "impression" for r in records) == 120_000


def test_bad_settings_are_rejected_clearly() -> None:
    with pytest.raises(ValueError, match="chunk_rows"):
        SimulatorConfig(chunk_rows=5, max_positions=10)
    with pytest.raises(ValueError, match="ISO date"):
        SimulatorConfig(start="yesterday")
