"""Replay into the real embedded broker: order per user, exact dead letters, counts that add up."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from pipelines.events import DeadLetter, decode_event, encode_event
from pipelines.kafka import EmbeddedBroker, ensure_topics, make_producer
from pipelines.logfile import iter_records
from pipelines.replay import _Pacer, replay
from pipelines.settings import Settings
from pipelines.simulator import SimulatorConfig, simulate

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
T0 = 1_767_571_214_000


def _by_user(values: list[dict]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for v in values:
        out[v["user_id"]].append(v["impression_id"])
    return out


def test_100k_round_trip_keeps_every_users_order(
    broker: EmbeddedBroker, settings: Settings, tmp_path: Path, read_topic
) -> None:
    path = tmp_path / "log.jsonl"
    summary = simulate(SimulatorConfig(days=2, users=3_000, items=2_000, impressions=95_000, seed=4), path)
    expected = list(iter_records(path))
    assert len(expected) >= 100_000

    stats = replay(path, settings, broker.bootstrap)
    assert (stats.read, stats.produced, stats.dead_lettered) == (len(expected), len(expected), 0)
    assert (stats.impressions, stats.clicks) == (summary.impressions, summary.clicks)

    for kind, topic in (("impression", settings.topic("impressions")), ("click", settings.topic("clicks"))):
        records = read_topic(broker.bootstrap, topic)
        values = [decode_event(r.value) for r in records]
        in_file = [e for e in expected if e["type"] == kind]
        by_id = lambda v: v["impression_id"]  # noqa: E731
        assert sorted(values, key=by_id) == sorted(in_file, key=by_id)
        # Keyed by user: one partition per user, and the user's events in file (= event-time) order.
        partitions: dict[str, set[int]] = defaultdict(set)
        for r, v in zip(records, values, strict=True):
            assert r.key == v["user_id"].encode()
            partitions[v["user_id"]].add(r.partition)
        assert all(len(p) == 1 for p in partitions.values())
        assert _by_user(values) == _by_user(in_file)
    # The cached partitions are the ones kafka-python's default partitioner picks for the same key.
    probe = settings.topic("probe")
    ensure_topics(broker.bootstrap, [probe], settings.topic_partitions)
    producer = make_producer(broker.bootstrap)
    try:
        for user, (partition,) in list(partitions.items())[:100]:
            assert producer.send(probe, key=user.encode(), value=b"x").get(timeout=10).partition == partition
    finally:
        producer.close()


def _impression(i: int) -> dict:
    return {"type": "impression", "impression_id": f"i{i}", "request_id": f"r{i}", "user_id": f"u{i % 5}",
            "item_id": f"t{i}", "position": 0, "event_time": T0 + i * 1000}


MALFORMED = {
    "unknown type": (encode_event(_impression(1) | {"type": "view"}), "unknown type 'view'"),
    "missing field": (b'{"type":"click","impression_id":"x","item_id":"t","event_time":1767571214000}',
                      "missing required field 'user_id'"),
    "wrong type": (encode_event(_impression(1) | {"position": "1"}), "field 'position' must be int, got str"),
    "wrong id type": (encode_event(_impression(1) | {"user_id": 5}), "field 'user_id' must be str, got int"),
    "negative time": (encode_event(_impression(1) | {"event_time": -1}), "event_time -1 is outside"),
    "time in seconds": (encode_event(_impression(1) | {"event_time": 1_767_571_214}), "in seconds instead"),
    "absurd time": (encode_event(_impression(1) | {"event_time": 99_999_999_999_999}), "is outside"),
    "undecodable": (b'{"type":"impression\xff\xfe"}', "not UTF-8"),
    "undecodable value": (encode_event(_impression(1))[:-1] + b',"device":"\xff"}', "not UTF-8"),
    "invalid json": (b"{this is not json}", "invalid JSON"),
    "not an object": (b'["impression"]', "must be a JSON object"),
}
TRUNCATED = encode_event(_impression(99))[:40]


def test_malformed_lines_are_dead_lettered_exactly_and_no_good_line_is_lost(
    broker: EmbeddedBroker, settings: Settings, tmp_path: Path, read_topic
) -> None:
    good = [_impression(i) for i in range(200)]
    lines: list[bytes] = []
    expected_dead: dict[int, str] = {}
    bad = list(MALFORMED.values())
    for i, record in enumerate(good):
        lines.append(encode_event(record))
        if i % 17 == 3 and bad:
            raw, reason = bad.pop()
            lines.append(raw)
            expected_dead[len(lines)] = reason
    lines.append(TRUNCATED)  # the file ends mid-record, without a newline
    expected_dead[len(lines)] = "invalid JSON"
    path = tmp_path / "dirty.jsonl"
    path.write_bytes(b"\n".join(lines))
    assert not bad

    stats = replay(path, settings, broker.bootstrap)
    assert stats.read == len(lines) == stats.produced + stats.dead_lettered
    assert (stats.produced, stats.dead_lettered) == (len(good), len(MALFORMED) + 1)

    dead_topic = read_topic(broker.bootstrap, settings.topic("deadletter"))
    letters = [DeadLetter.from_json(r.value) for r in dead_topic]
    assert {d.offset: d for d in letters}.keys() == expected_dead.keys()
    for d in letters:
        assert expected_dead[d.offset] in d.error, (d.offset, d.error)
        assert d.source == str(path) and d.partition == -1
        assert d.raw == lines[d.offset - 1]  # the raw bytes, exactly, undecodable ones included
    produced = [json.loads(r.value) for r in read_topic(broker.bootstrap, settings.topic("impressions"))]
    assert sorted(p["impression_id"] for p in produced) == sorted(g["impression_id"] for g in good)


def test_adapter_replay_is_event_time_ordered_and_counts_add_up(
    broker: EmbeddedBroker, settings: Settings, shared_data: Path, read_topic
) -> None:
    stats = replay(shared_data / "avazu-sample" / "train.csv", settings, broker.bootstrap, fmt="avazu")
    assert (stats.impressions, stats.skipped, stats.dead_lettered, stats.out_of_order) == (8_087, 1, 0, 0)
    assert stats.read == stats.produced + stats.dead_lettered + stats.skipped
    records = read_topic(broker.bootstrap, settings.topic("impressions"))
    assert len(records) == 8_087
    per_partition: dict[int, list[int]] = defaultdict(list)
    for r in records:
        per_partition[r.partition].append(json.loads(r.value)["event_time"])
    # Avazu rows are spread inside their hour, then re-ordered by time before producing.
    assert all(times == sorted(times) for times in per_partition.values())


def test_mind_and_parquet_sources(broker: EmbeddedBroker, settings: Settings, tmp_path: Path) -> None:
    mind = replay(FIXTURES / "mind_behaviors.tsv", settings, broker.bootstrap, fmt="mind")
    assert (mind.impressions, mind.clicks, mind.read) == (17, 12, 29)
    path = tmp_path / "log.parquet"
    summary = simulate(SimulatorConfig(days=1, users=50, items=40, impressions=500, categories=4), path)
    parquet = replay(path, settings.model_copy(update={"topic_prefix": settings.topic_prefix + "pq"}),
                     broker.bootstrap)
    assert (parquet.impressions, parquet.clicks, parquet.dead_lettered) == (500, summary.clicks, 0)


def test_unknown_format_and_missing_file_are_clear_errors(broker: EmbeddedBroker, settings: Settings) -> None:
    with pytest.raises(ValueError, match="unknown format 'csv'"):
        replay(FIXTURES / "movielens_u.data", settings, broker.bootstrap, fmt="csv")
    with pytest.raises(FileNotFoundError, match="no such log file"):
        replay(FIXTURES / "nope.jsonl", settings, broker.bootstrap)


def test_pacer_follows_recorded_time_scaled_by_speed(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    slept: list[float] = []

    def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr("pipelines.replay.time.monotonic", lambda: clock[0])
    monkeypatch.setattr("pipelines.replay.time.sleep", fake_sleep)
    pacer = _Pacer(speed=10.0)
    for event_time in (T0, T0 + 5_000, T0 + 5_000, T0 + 65_000):
        pacer.wait(event_time)
    assert slept == pytest.approx([0.5, 6.0])  # 5 s and 60 s of recorded time at 10x
    with pytest.raises(ValueError, match="speed must be > 0"):
        _Pacer(speed=0)
