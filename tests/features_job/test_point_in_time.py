"""Point-in-time correctness: every feature recomputed independently in DuckDB from the raw log.

The job's rows must equal the independent computation, and no feature may use an event at or after
its row's time.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from features_job.helpers import read_table
from pipelines.beam.attribution import RECENT_RETENTION_MS
from pipelines.beam.job import JobConfig, run_file
from pipelines.beam.stats import history_of, prune_history, totals_schema, window_stats
from pipelines.settings import Settings
from pipelines.tables import ALL_TIME, CTR_PRIOR_CLICKS, CTR_PRIOR_IMPRESSIONS, StatHorizons

WINDOW_S = 1800
SEQ_LEN = 5
RETENTION = RECENT_RETENTION_MS  # a click's category comes from its impression up to this delay


@pytest.fixture(scope="module")
def built(small_log: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Settings]:
    home = tmp_path_factory.mktemp("pit") / "home"
    settings = Settings(home=home, attribution_window_s=WINDOW_S, sequence_length=SEQ_LEN)
    report = run_file(settings, small_log, config=JobConfig(num_shards=3, piece_size=700))
    assert report.balanced and report.consumed > 2_400
    return home, settings


# Horizons a user configured: other sliding lengths (the longest sets how much history is kept) and two
# decayed constants, one shorter than a sliding window.
CUSTOM = {"stat_windows": "45m,2d", "stat_decayed_windows": "1d,90d"}


@pytest.fixture(scope="module")
def built_custom(small_log: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Settings]:
    home = tmp_path_factory.mktemp("pit-custom") / "home"
    settings = Settings(home=home, attribution_window_s=WINDOW_S, sequence_length=SEQ_LEN, **CUSTOM)
    report = run_file(settings, small_log, config=JobConfig(num_shards=2, piece_size=900))
    assert report.balanced
    return home, settings


def _con(home: Path, log: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    con.execute(f"CREATE TEMP VIEW log AS SELECT * FROM read_parquet('{log}')")
    return con


@pytest.mark.parametrize("entity, table", [("user_id", "user_stats"), ("item_id", "item_stats")])
@pytest.mark.parametrize("home_of", ["built", "built_custom"])
def test_window_stats_equal_independent_duckdb(
    request: pytest.FixtureRequest, home_of: str, small_log: Path, entity: str, table: str
) -> None:
    home, settings = request.getfixturevalue(home_of)
    horizons = settings.horizons
    con = _con(home, small_log)
    columns = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]
    stats = [c.split("_", 1)[1] for c in columns if c.startswith("ctr_")]
    assert stats == list(horizons.suffixes)  # the table carries exactly the configured horizons, in order
    checks = []
    for w, seconds in horizons.sliding:
        ms = seconds * 1000
        checks.append(
            f"""
            (SELECT count(*) FROM log l WHERE l.{entity} = s.{entity} AND l.type = 'impression'
               AND l.event_time >= epoch_ms(s.event_time) - {ms} AND l.event_time < epoch_ms(s.event_time))
               <> s.impressions_{w}
            OR (SELECT count(*) FROM log l WHERE l.{entity} = s.{entity} AND l.type = 'click'
               AND l.event_time >= epoch_ms(s.event_time) - {ms} AND l.event_time < epoch_ms(s.event_time))
               <> s.clicks_{w}
            OR abs(s.ctr_{w}
                   - (s.clicks_{w} + {CTR_PRIOR_CLICKS})
                     / (s.impressions_{w} + {CTR_PRIOR_IMPRESSIONS})) > 1e-12"""
        )
    for stat, kind in (("impressions", "impression"), ("clicks", "click")):
        before = (f"FROM log l WHERE l.{entity} = s.{entity} AND l.type = '{kind}' "
                  "AND l.event_time < epoch_ms(s.event_time)")
        checks.append(f"(SELECT count(*) {before}) <> s.{stat}_{ALL_TIME}")
        for w, seconds in horizons.decayed:
            weight = f"exp(-(epoch_ms(s.event_time) - l.event_time) / {seconds * 1000.0})"
            decayed = f"(SELECT coalesce(sum({weight}), 0) {before})"
            checks.append(f"abs({decayed} - s.{stat}_{w}) > 1e-9 * (1 + s.{stat}_{w})")
    for w in (*(n for n, _ in horizons.decayed), ALL_TIME):
        smoothed = f"(s.clicks_{w} + {CTR_PRIOR_CLICKS}) / (s.impressions_{w} + {CTR_PRIOR_IMPRESSIONS})"
        checks.append(f"abs(s.ctr_{w} - {smoothed}) > 1e-12")
    wrong = con.execute(f"SELECT count(*) FROM {table} s WHERE {' OR '.join(checks)}").fetchall()[0][0]
    # One row per distinct (entity, event time) of the log, and no other rows.
    expected_rows = con.execute(
        f"SELECT count(*) FROM (SELECT DISTINCT {entity}, event_time FROM log)"
    ).fetchall()
    rows = con.execute(f"SELECT count(*), count(DISTINCT ({entity}, event_time)) FROM {table}").fetchall()[0]
    longest = horizons.sliding[-1][0]
    non_zero = con.execute(
        f"SELECT count(*) FROM {table} WHERE impressions_{longest} > 0 AND clicks_{longest} > 0"
    ).fetchall()
    con.close()
    assert wrong == 0
    assert rows == (expected_rows[0][0], expected_rows[0][0])
    assert non_zero[0][0] > 0  # the comparison is not between empty windows only


@pytest.mark.parametrize("horizons", [StatHorizons(), StatHorizons.parse("1h,3d", "10d,60d")],
                         ids=["default", "custom"])
def test_long_horizons_fold_pruned_history_without_losing_it(horizons: StatHorizons) -> None:
    """Over 40 days in 8 batches the history is pruned to the longest sliding window and folded into
    the totals again and again; every decayed count and the all-time counts still equal a brute-force
    sum over every event (decayed: to float rounding; counts: exactly), and the state stays one totals
    row per entity."""
    rng = np.random.default_rng(3)
    n, day = 4000, 86_400_000
    times = np.sort(rng.integers(0, 40 * day, n)) + 1_767_225_600_000
    entities = rng.integers(0, 12, n).astype(str)
    clicks = rng.random(n) < 0.2
    history = totals = None
    got = []
    for chunk in np.array_split(np.arange(n), 8):
        events = pa.table({"item_id": entities[chunk], "event_time": times[chunk],
                           "type": np.where(clicks[chunk], "click", "impression")})
        new = history_of(events, "item_id")
        history = new if history is None else pa.concat_tables([history, new])
        totals = totals if totals is not None else totals_schema("item_id", horizons).empty_table()
        got.append(window_stats(history, events, "item_id", horizons, totals))
        history, totals = prune_history(history, totals, "item_id", int(times[chunk].max()), horizons)
    kept_from = times.max() - horizons.longest_sliding_s * 1000
    assert totals.num_rows == 12 and pc.min(history["event_time"]).as_py() >= kept_from
    stats = pa.concat_tables(got)
    for row in stats.to_pylist():
        earlier = (entities == row["item_id"]) & (times < row["event_time"])
        for stat, mask in (("impressions", ~clicks), ("clicks", clicks)):
            assert row[f"{stat}_{ALL_TIME}"] == int((earlier & mask).sum())
            for name, constant in horizons.decayed:
                want = np.exp(-(row["event_time"] - times[earlier & mask]) / (constant * 1000.0)).sum()
                assert row[f"{stat}_{name}"] == pytest.approx(want, rel=1e-9, abs=1e-9)


def test_sequences_use_only_earlier_clicks_and_equal_independent(built, small_log: Path) -> None:
    home, _ = built
    seq = read_table(home, "user_sequences")
    # Zero rows where a sequence holds a click at or after the impression's time.
    times = pc.list_flatten(seq["seq_event_times"])
    owner_time = pc.take(pc.cast(seq["event_time"], "int64"), pc.list_parent_indices(seq["seq_event_times"]))
    assert pc.sum(pc.greater_equal(times, owner_time)).as_py() in (0, None)
    assert pc.max(seq["seq_length"]).as_py() == SEQ_LEN  # sequences do fill up in this log

    con = _con(home, small_log)
    mismatches = con.execute(
        f"""
        WITH clicks AS (
            SELECT c.user_id, c.event_time, CAST(c.item_id AS BIGINT) AS item,
                   coalesce(CAST(coalesce(c.category, i.category) AS BIGINT), 0) AS cat
            FROM log c LEFT JOIN (SELECT * FROM log WHERE type = 'impression') i
                ON i.impression_id = c.impression_id AND c.event_time - i.event_time BETWEEN 0 AND {RETENTION}
            WHERE c.type = 'click'),
        points AS (SELECT DISTINCT user_id, event_time FROM log WHERE type = 'impression'),
        ranked AS (
            SELECT p.user_id, p.event_time AS t, c.item, c.cat, c.event_time AS ct,
                   row_number() OVER (PARTITION BY p.user_id, p.event_time
                                      ORDER BY c.event_time DESC, c.item DESC) AS rn
            FROM points p JOIN clicks c ON c.user_id = p.user_id AND c.event_time < p.event_time),
        expected AS (
            SELECT p.user_id, p.event_time AS t,
                   coalesce(list(r.item ORDER BY r.ct, r.item) FILTER (WHERE r.rn <= {SEQ_LEN}), []) AS items,
                   coalesce(list(r.cat ORDER BY r.ct, r.item) FILTER (WHERE r.rn <= {SEQ_LEN}), []) AS cats,
                   coalesce(list(r.ct ORDER BY r.ct, r.item) FILTER (WHERE r.rn <= {SEQ_LEN}), []) AS cts
            FROM points p LEFT JOIN ranked r ON r.user_id = p.user_id AND r.t = p.event_time
            GROUP BY ALL)
        SELECT count(*) FROM expected e FULL JOIN user_sequences s
            ON s.user_id = e.user_id AND epoch_ms(s.event_time) = e.t
        WHERE s.user_id IS NULL OR e.user_id IS NULL
           OR s.seq_event_times <> e.cts OR s.seq_category_ids <> e.cats
           OR list_sort(s.seq_item_ids) <> list_sort(e.items) OR s.seq_length <> len(e.cts)
        """
    ).fetchall()[0][0]
    con.close()
    assert mismatches == 0


def test_labels_equal_independent_attribution(built, small_log: Path) -> None:
    home, _ = built
    con = _con(home, small_log)
    window_ms = WINDOW_S * 1000
    wrong = con.execute(
        f"""
        WITH expected AS (
            SELECT i.impression_id,
                   min(c.event_time)
                       FILTER (WHERE c.event_time - i.event_time BETWEEN 0 AND {window_ms}) AS ct
            FROM log i LEFT JOIN (SELECT * FROM log WHERE type = 'click') c USING (impression_id)
            WHERE i.type = 'impression' GROUP BY i.impression_id)
        SELECT count(*) FROM expected e FULL JOIN labelled_samples s USING (impression_id)
        WHERE s.impression_id IS NULL OR e.impression_id IS NULL
           OR s.label <> (e.ct IS NOT NULL)::INT
           OR coalesce(epoch_ms(s.click_time), -1) <> coalesce(e.ct, -1)
        """
    ).fetchall()[0][0]
    late = con.execute(
        f"""SELECT count(*) FROM log c
            JOIN (SELECT * FROM log WHERE type = 'impression') i USING (impression_id)
            WHERE c.type = 'click' AND c.event_time - i.event_time > {window_ms}"""
    ).fetchall()[0][0]
    aside = con.execute("SELECT count(*) FROM unattributed_clicks WHERE reason = 'after_window'").fetchall()[
        0
    ][0]
    positives = con.execute("SELECT sum(label) FROM labelled_samples").fetchall()[0][0]
    con.close()
    assert wrong == 0
    assert late > 0 and aside == late  # clicks after the window are counted and kept aside
    assert positives > 0


def test_item_attributes_hold_each_items_category_from_its_first_impression(built, small_log: Path) -> None:
    home, _ = built
    con = _con(home, small_log)
    # The simulator gives every item one category for life: one batch -> one row per item, at its first
    # impression (the Kafka job repeats the row per micro-batch; the newest wins either way).
    want = con.sql(
        "SELECT item_id, min(event_time) AS t, any_value(category) AS category, "
        "count(DISTINCT category) AS n FROM log WHERE type = 'impression' AND category IS NOT NULL "
        "GROUP BY item_id ORDER BY item_id"
    ).fetchall()
    got = con.sql(
        "SELECT item_id, epoch_ms(event_time), category FROM item_attributes ORDER BY item_id"
    ).fetchall()
    assert want and all(n == 1 for *_, n in want)
    assert got == [(item, t, category) for item, t, category, _ in want]


def test_a_decayed_horizon_too_short_for_the_batch_is_an_error_not_an_overflow() -> None:
    """An entity whose events in one batch span more than float64 can sum (here 800 days under a 1-day
    constant) is refused with the horizon's name; a longer constant takes the same batch."""
    day = 86_400_000
    times = np.array([0, 400 * day, 800 * day]) + 852_076_800_000  # 1997: dates do not matter any more
    events = pa.table({"item_id": ["a"] * 3, "event_time": times, "type": ["impression"] * 3})
    history = history_of(events, "item_id")
    with pytest.raises(ValueError, match="decayed horizon 1d: .* 800 time constants"):
        window_stats(history, events, "item_id", StatHorizons.parse("1h", "1d"))
    stats = window_stats(history, events, "item_id", StatHorizons.parse("1h", "30d")).to_pylist()
    assert stats[2]["impressions_30d"] == pytest.approx(np.exp(-800 / 30) + np.exp(-400 / 30), rel=1e-12)
