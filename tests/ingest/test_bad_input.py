"""Replay against hostile logs: an oversized record, blank lines, and Parquet logs of foreign types."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.events import DEADLETTER_RAW_PREFIX_BYTES, MAX_RECORD_BYTES, DeadLetter, encode_event
from pipelines.kafka import EmbeddedBroker
from pipelines.logfile import LogSchemaError, iter_events
from pipelines.replay import replay
from pipelines.settings import Settings

T0 = 1_767_571_214_000


def _impression(i: int) -> dict:
    return {"type": "impression", "impression_id": f"i{i}", "request_id": f"r{i}", "user_id": f"u{i % 7}",
            "item_id": f"t{i % 5}", "position": 0, "event_time": T0 + i * 1000}


def test_an_oversized_record_is_dead_lettered_with_a_prefix_and_replay_goes_on(
    broker: EmbeddedBroker, settings: Settings, tmp_path: Path, read_topic
) -> None:
    # 2 MB: over the record limit and over the producer's 1 MB message limit, which used to stop replay.
    huge = encode_event(_impression(5))[:-1] + b',"pad":"' + b"x" * 2_000_000 + b'"}'
    lines = [encode_event(_impression(i)) for i in range(5)] + [huge]
    lines += [encode_event(_impression(i)) for i in range(6, 10)]
    path = tmp_path / "huge.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    stats = replay(path, settings, broker.bootstrap)
    assert (stats.read, stats.produced, stats.dead_lettered, stats.failed) == (10, 9, 1, 0)
    (record,) = read_topic(broker.bootstrap, settings.topic("deadletter"))
    letter = DeadLetter.from_json(record.value)
    assert letter.offset == 6 and letter.error == f"record of {len(huge)} bytes exceeds {MAX_RECORD_BYTES}"
    assert letter.raw == huge[:DEADLETTER_RAW_PREFIX_BYTES]
    produced = {json.loads(r.value)["impression_id"] for r in read_topic(broker.bootstrap,
                                                                         settings.topic("impressions"))}
    assert produced == {f"i{i}" for i in range(10) if i != 5}  # what came after the big line, too


def test_blank_lines_are_skipped_and_counted_not_dead_lettered(
    broker: EmbeddedBroker, settings: Settings, tmp_path: Path, read_topic
) -> None:
    good = [encode_event(_impression(i)) for i in range(6)]
    path = tmp_path / "gaps.jsonl"
    path.write_bytes(b"\n" + good[0] + b"\n" + good[1] + b"\n\n  \t\n" + b"\n".join(good[2:]) + b"\n\r\n")
    stats = replay(path, settings, broker.bootstrap)
    assert (stats.read, stats.produced, stats.dead_lettered, stats.blank_lines) == (6, 6, 0, 4)
    assert read_topic(broker.bootstrap, settings.topic("deadletter")) == []
    # The file path (convert, validation of types) skips them too.
    assert [r["impression_id"] for r in iter_events(path)] == [f"i{i}" for i in range(6)]


def _foreign_parquet(path: Path) -> None:
    """What pandas or Spark writes: a timestamp event_time, integer ids, int64 positions, a dict string."""
    rows = 4
    pq.write_table(pa.table({
        "type": pa.array(["impression"] * 3 + ["click"]).dictionary_encode(),
        "impression_id": pa.array([1, 2, 3, 1], pa.int64()),
        "request_id": pa.array(["r1", "r2", "r3", None]),
        "user_id": pa.array([10, 11, 10, 10], pa.int32()),
        "item_id": pa.array(["a", "b", "c", "a"]),
        "position": pa.array([0, 1, 99_999_999_999, None], pa.int64()),  # row 3: out of range
        "event_time": pa.array([datetime.fromtimestamp((T0 + i * 1000) / 1000, UTC) for i in range(rows)],
                               pa.timestamp("us", tz="UTC")),
        "extra": pa.array([1.5] * rows),
    }), path)


def test_a_parquet_log_of_foreign_types_is_coerced_not_dead_lettered(
    broker: EmbeddedBroker, settings: Settings, tmp_path: Path, read_topic
) -> None:
    path = tmp_path / "foreign.parquet"
    _foreign_parquet(path)
    stats = replay(path, settings, broker.bootstrap)
    assert (stats.read, stats.impressions, stats.clicks, stats.dead_lettered) == (4, 2, 1, 1)
    values = [json.loads(r.value) for r in read_topic(broker.bootstrap, settings.topic("impressions"))]
    first = min(values, key=lambda v: v["event_time"])
    assert first == {"type": "impression", "impression_id": "1", "request_id": "r1", "user_id": "10",
                     "item_id": "a", "position": 0, "event_time": T0}
    (record,) = read_topic(broker.bootstrap, settings.topic("deadletter"))
    letter = DeadLetter.from_json(record.value)
    assert letter.offset == 3 and "position 99999999999 is outside" in letter.error
    assert json.loads(letter.raw)["event_time"] == T0 + 2000  # plain JSON, not a datetime


@pytest.mark.parametrize(("columns", "message"), [
    ({"type": pa.array(["click"]), "impression_id": pa.array(["i"]), "item_id": pa.array(["t"]),
      "event_time": pa.array([T0])}, "lacks required column(s) ['user_id']"),
    ({"type": pa.array(["click"]), "impression_id": pa.array(["i"]), "user_id": pa.array([1.5]),
      "item_id": pa.array(["t"]), "event_time": pa.array([T0])}, "column 'user_id' is double"),
])
def test_a_parquet_log_that_cannot_be_read_is_refused_before_any_record(
    broker: EmbeddedBroker, settings: Settings, tmp_path: Path, read_topic, columns: dict, message: str
) -> None:
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table(columns), path)
    with pytest.raises(LogSchemaError) as info:
        replay(path, settings, broker.bootstrap)
    assert message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(LogSchemaError):
        iter_events(path)  # at the call, not at the first record
