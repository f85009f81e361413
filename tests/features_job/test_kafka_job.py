"""The Kafka micro-batch job against the real embedded broker.

Many small micro-batches with state carried between them must give exactly the tables of a one-shot
backfill of the same log; malformed records are dead-lettered with reasons; accounting balances.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from kafka import TopicPartition

from features_job.helpers import TABLE_KEYS, comparable, read_table
from pipelines.beam import state as st
from pipelines.beam.job import JobConfig, RunReport, run_file, run_kafka
from pipelines.events import DeadLetter
from pipelines.kafka import high_watermarks, make_consumer, make_producer
from pipelines.replay import replay
from pipelines.settings import Settings

MALFORMED = [
    b"{not json",
    b'{"type":"impression","impression_id":"x1","request_id":"r","user_id":"u","item_id":"i","position":1,"event_time":5}',
    b'{"type":"view","user_id":"u"}',
]


@pytest.fixture
def kafka_settings(settings: Settings, broker) -> Settings:
    return settings.model_copy(update={"kafka_bootstrap": broker.bootstrap, "topic_partitions": 2})


def test_micro_batches_equal_one_shot_backfill(
    kafka_settings: Settings, small_log: Path, tmp_path: Path
) -> None:
    stats = replay(small_log, kafka_settings, kafka_settings.kafka_bootstrap)
    producer = make_producer(kafka_settings.kafka_bootstrap)
    for raw in MALFORMED:
        producer.send(kafka_settings.topic("impressions"), value=raw, key=b"u", partition=1)
    producer.flush()
    producer.close()

    pushed: dict[str, int] = {}

    def run(shards: int, max_batches: int | None) -> RunReport:
        return run_kafka(
            kafka_settings,
            final=True,
            online_sink=lambda table, frame: pushed.__setitem__(table, pushed.get(table, 0) + frame.num_rows),
            config=JobConfig(num_shards=shards, max_records_per_partition=400, piece_size=150),
            max_batches=max_batches,
        )

    # The shard count changes mid-way: the state written by 2 shards is read back by 3.
    first = run(2, 2)
    report = RunReport(first.batches + run(3, None).batches)
    assert len(first.batches) == 2 and len(report.batches) > 3  # state really crossed micro-batch boundaries
    assert report.balanced
    assert report.consumed == stats.produced + len(MALFORMED)
    assert sum(v["dead_lettered"] for v in report.accounting.values()) == len(MALFORMED)
    checkpoint = st.load_checkpoint(st.job_dir(kafka_settings.checkpoints_dir, kafka_settings.topic_prefix))
    assert checkpoint.final and sum(checkpoint.offsets.values()) == report.consumed

    reference = Settings(home=tmp_path / "ref", attribution_window_s=kafka_settings.attribution_window_s)
    run_file(reference, small_log, config=JobConfig(num_shards=5))
    for table, keys in TABLE_KEYS.items():
        got, want = read_table(kafka_settings.home, table), read_table(reference.home, table)
        assert want.num_rows > 0
        assert comparable(got, keys) == comparable(want, keys), table
        created = got.sort_by("created")["created"].to_pylist()
        assert len(set(created)) == len(created)  # strictly increasing `created`
    assert pushed["user_stats"] >= 1 and set(pushed) == {"user_stats", "item_stats", "user_sequences",
                                                          "item_attributes"}

    dead = read_table(kafka_settings.home, "dead_letters")
    assert sorted(dead["raw"].to_pylist()) == sorted(MALFORMED)
    reasons = " | ".join(dead["error"].to_pylist())
    assert "invalid JSON" in reasons and "event_time 5" in reasons and "unknown type 'view'" in reasons
    # ...and on the dead-letter topic, with source partition and offset.
    consumer = make_consumer(kafka_settings.kafka_bootstrap)
    tps = [TopicPartition(kafka_settings.topic("deadletter"), p) for p in range(2)]
    end = high_watermarks(consumer, tps)
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    letters = []
    while len(letters) < sum(end.values()):
        for records in consumer.poll(timeout_ms=1000).values():
            letters += [DeadLetter.from_json(r.value) for r in records]
    consumer.close()
    assert sorted(d.raw for d in letters if d.source == kafka_settings.topic("impressions")) == sorted(
        MALFORMED
    )

    # Files are named after the offsets that produced them.
    names = {p.stem for p in (kafka_settings.warehouse_dir / "labelled_samples").rglob("*.parquet")}
    assert any(n.startswith("clicks.0.") or n.startswith("impressions.0.0-") for n in names)
    meta = pq.read_schema(next((kafka_settings.warehouse_dir / "user_stats").rglob("*.parquet"))).metadata
    assert json.loads(meta[b"ctrflow.source_ranges"])


def test_continuous_mode_waits_for_the_window_then_labels(kafka_settings: Settings) -> None:
    """An impression younger than the window is not labelled negative early: its click comes later."""
    t0 = 1_767_600_000_000
    bootstrap = kafka_settings.kafka_bootstrap
    imp = {"type": "impression", "request_id": "r", "user_id": "u1", "item_id": "i1", "position": 0}
    producer = make_producer(bootstrap)
    from pipelines.events import encode_event
    from pipelines.kafka import ensure_ctr_topics

    ensure_ctr_topics(bootstrap, kafka_settings)

    def send(topic: str, event: dict) -> None:
        producer.send(kafka_settings.topic(topic), value=encode_event(event), key=b"u1", partition=0)
        producer.flush()

    window_ms = kafka_settings.attribution_window_s * 1000
    send("impressions", {**imp, "impression_id": "a", "event_time": t0})
    send(
        "clicks",
        {"type": "click", "impression_id": "zz", "user_id": "u1", "item_id": "i1", "event_time": t0 + 1},
    )
    first = run_kafka(kafka_settings, max_batches=1)
    assert first.rows.get("labelled_samples", 0) == 0  # window still open: nothing labelled yet

    send(
        "clicks",
        {"type": "click", "impression_id": "a", "user_id": "u1", "item_id": "i1", "event_time": t0 + 60_000},
    )
    later = t0 + 2 * window_ms + 1
    send("impressions", {**imp, "impression_id": "b", "event_time": later})
    send(
        "clicks",
        {"type": "click", "impression_id": "q", "user_id": "u1", "item_id": "i9", "event_time": later},
    )
    second = run_kafka(kafka_settings, continuous=True, max_batches=1)
    assert second.rows["labelled_samples"] == 1
    labelled = read_table(kafka_settings.home, "labelled_samples").to_pylist()
    assert [(r["impression_id"], r["label"]) for r in labelled] == [("a", 1)]
    aside = read_table(kafka_settings.home, "unattributed_clicks").to_pylist()
    assert [(r["impression_id"], r["reason"]) for r in aside] == [("zz", "no_impression")]
    producer.close()
