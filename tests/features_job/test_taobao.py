"""The feature job on real data: a slice of Taobao UserBehavior replayed through Kafka.

Uses the first lines of the shared sample plus its real truncated last line (a malformed record the
replay dead-letters); the copy lives in the test's temp dir, never in the repository.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow.compute as pc

from features_job.helpers import read_table
from pipelines.beam.job import JobConfig, run_kafka
from pipelines.replay import replay
from pipelines.settings import Settings

LINES = 6_000


def test_taobao_slice_through_kafka(settings: Settings, broker, shared_data: Path, tmp_path: Path) -> None:
    sample = shared_data / "taobao-userbehavior" / "stream_slice_2017-11-26.csv"
    lines = sample.read_bytes().split(b"\n")
    assert not sample.read_bytes().endswith(b"\n")  # the real truncated last record
    subset = tmp_path / "taobao_slice.csv"
    subset.write_bytes(b"\n".join(lines[:LINES] + [lines[-1]]))

    s = settings.model_copy(update={"kafka_bootstrap": broker.bootstrap})
    stats = replay(subset, s, broker.bootstrap, fmt="taobao")
    assert stats.dead_lettered == 1 and stats.produced > LINES

    report = run_kafka(s, final=True, config=JobConfig(max_records_per_partition=4_000, piece_size=2_000))
    assert report.balanced and report.consumed == stats.produced
    assert len(report.batches) >= 2

    samples = read_table(s.home, "labelled_samples")
    assert samples.num_rows == stats.impressions
    # Every pv is one click on one of its request's impressions, 1 s later: all attributed.
    assert pc.sum(samples["label"]).as_py() == stats.clicks
    with duckdb.connect(str(s.warehouse_db), read_only=True) as con:
        leaks = con.sql(
            "SELECT count(*) FROM user_sequences, unnest(seq_event_times) AS u(t) "
            "WHERE t >= epoch_ms(event_time)"
        ).fetchall()[0][0]
        repeat_users = con.sql("SELECT count(*) FROM user_sequences WHERE seq_length > 0").fetchall()[0][0]
        days = con.sql("SELECT DISTINCT date FROM labelled_samples").fetchall()
        item_stats = con.sql("SELECT max(impressions_1h) FROM item_stats").fetchall()[0][0]
    assert leaks == 0 and repeat_users > 0 and item_stats > 0
    assert [str(d[0]) for d in days] == ["2017-11-26"]
