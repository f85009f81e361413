"""The file backfill against hostile logs: oversized records, blank lines, foreign Parquet types, missing
columns, and a warehouse whose every table answers a query even when it has no rows."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from orchestration.cli import app
from pipelines.beam.job import JobConfig, run_file
from pipelines.beam.sinks import _empty_select, warehouse_schemas
from pipelines.events import DEADLETTER_RAW_PREFIX_BYTES, MAX_RECORD_BYTES, encode_event
from pipelines.logfile import LogSchemaError
from pipelines.settings import Settings
from pipelines.tables import LABELLED_SAMPLES
from tests.features_job.helpers import read_table

T0 = 1_767_571_214_000
CONFIG = JobConfig(num_shards=2, num_workers=1)
runner = CliRunner()


def _events(n: int) -> list[dict]:
    out = []
    for i in range(n):
        out.append({"type": "impression", "impression_id": f"i{i}", "request_id": f"r{i}",
                    "user_id": f"u{i % 3}", "item_id": f"t{i % 4}", "position": 0,
                    "event_time": T0 + i * 1000})
        if i % 2 == 0:
            out.append({"type": "click", "impression_id": f"i{i}", "user_id": f"u{i % 3}",
                        "item_id": f"t{i % 4}", "event_time": T0 + i * 1000 + 500})
    return out


def test_oversized_and_blank_lines_of_a_jsonl_backfill(settings: Settings, tmp_path: Path) -> None:
    lines = [encode_event(e) for e in _events(6)]  # 9 events
    huge = b'{"type":"impression","pad":"' + b"y" * (MAX_RECORD_BYTES + 10) + b'"}'
    path = tmp_path / "log.jsonl"
    path.write_bytes(b"\n".join(lines[:4]) + b"\n\n   \n" + huge + b"\n" + b"\n".join(lines[4:]) + b"\n\n")
    report = run_file(settings, path, config=CONFIG)
    (counts,) = report.accounting.values()
    assert counts == {"consumed": 10, "accepted": 9, "dead_lettered": 1, "blank_lines": 3}
    assert report.balanced
    (letter,) = read_table(settings.home, "dead_letters").to_pylist()
    assert letter["offset"] == 7
    assert letter["error"] == f"record of {len(huge)} bytes exceeds {MAX_RECORD_BYTES}"
    assert letter["raw"] == huge[:DEADLETTER_RAW_PREFIX_BYTES]


def test_a_foreign_parquet_log_is_conformed_like_replay_does(settings: Settings, tmp_path: Path) -> None:
    events = _events(6)
    times = [datetime.fromtimestamp(e["event_time"] / 1000, UTC) for e in events]
    path = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({
        "type": [e["type"] for e in events],
        "impression_id": pa.array([int(e["impression_id"][1:]) for e in events], pa.int64()),
        "request_id": [e.get("request_id") for e in events],
        "user_id": pa.array([int(e["user_id"][1:]) for e in events], pa.int16()),
        "item_id": [e["item_id"] for e in events],
        "position": pa.array([e.get("position") for e in events], pa.int64()),
        "event_time": pa.array(times, pa.timestamp("ns")),  # naive: taken as UTC
    }), path)
    report = run_file(settings, path, config=CONFIG)
    (counts,) = report.accounting.values()
    assert counts == {"consumed": 9, "accepted": 9, "dead_lettered": 0}
    samples = read_table(settings.home, "labelled_samples").sort_by("event_time").to_pylist()
    assert [s["impression_id"] for s in samples] == [str(i) for i in range(6)]
    assert [s["label"] for s in samples] == [1, 0, 1, 0, 1, 0]
    assert samples[0]["user_id"] == "0" and samples[0]["event_time"] == times[0]


def test_a_parquet_log_without_a_required_column_is_one_line(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "no_time.parquet"
    pq.write_table(pa.table({"type": ["click"], "impression_id": ["i"], "user_id": ["u"], "item_id": ["t"]}),
                   path)
    with pytest.raises(LogSchemaError, match=r"lacks required column\(s\) \['event_time'\]"):
        run_file(settings, path, config=CONFIG)
    result = runner.invoke(app, ["--home", str(settings.home), "features", "build", "--from-file", str(path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {path}: columnar log lacks required column(s) ['event_time'] "
        "(it has ['type', 'impression_id', 'user_id', 'item_id'])"
    ]


def test_every_table_answers_a_query_even_when_empty(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "clean.jsonl"
    path.write_bytes(b"".join(encode_event(e) + b"\n" for e in _events(4)))
    run_file(settings, path, config=CONFIG)
    with duckdb.connect(str(settings.warehouse_db), read_only=True) as con:
        for name, schema in warehouse_schemas(settings.horizons).items():
            columns = [row[0] for row in con.sql(f'DESCRIBE "{name}"').fetchall()]
            assert columns[: len(schema)] == schema.names, name
        assert con.execute("SELECT count(*) FROM dead_letters").fetchone() == (0,)
        assert con.execute("SELECT count(*) FROM labelled_samples").fetchone() == (4,)
        real = con.execute('DESCRIBE "labelled_samples"').fetchall()
    with duckdb.connect() as con:  # an empty view has exactly the columns and types the files give
        con.execute(f"CREATE VIEW empty AS {_empty_select(con, LABELLED_SAMPLES)}")
        assert con.execute("DESCRIBE empty").fetchall() == real
