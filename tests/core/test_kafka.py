"""The Kafka plumbing against the real embedded broker."""

from __future__ import annotations

import time

from pipelines.kafka import (
    EmbeddedBroker,
    ensure_ctr_topics,
    ensure_topics,
    high_watermarks,
    make_consumer,
    make_producer,
    partitions_for,
)
from pipelines.settings import Settings


def test_high_watermarks_count_every_record_after_batched_produce(broker: EmbeddedBroker) -> None:
    topic = "hw.batched"
    ensure_topics(broker.bootstrap, [topic], partitions=3)
    producer = make_producer(broker.bootstrap)
    n = 20_000
    for i in range(n):
        producer.send(topic, key=str(i % 11).encode(), value=b"x")
    producer.flush()
    producer.close()

    consumer = make_consumer(broker.bootstrap)
    try:
        parts = partitions_for(consumer, topic)
        marks = high_watermarks(consumer, parts)
        assert sum(marks.values()) == n
        # The marks are the true ends: reading up to them yields every record exactly once.
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        seen = 0
        deadline = time.monotonic() + 60  # fail, rather than hang, if the marks are never reached
        while any(consumer.position(tp) < marks[tp] for tp in parts):
            assert time.monotonic() < deadline, f"read {seen} of {n} records in 60 s"
            for records in consumer.poll(timeout_ms=500).values():
                seen += len(records)
        assert seen == n
    finally:
        consumer.close()


def test_empty_partitions_report_zero(broker: EmbeddedBroker) -> None:
    ensure_topics(broker.bootstrap, ["hw.empty"], partitions=2)
    consumer = make_consumer(broker.bootstrap)
    try:
        marks = high_watermarks(consumer, partitions_for(consumer, "hw.empty"))
        assert list(marks.values()) == [0, 0]
    finally:
        consumer.close()


def test_ensure_ctr_topics_is_idempotent_and_uses_prefix(broker: EmbeddedBroker) -> None:
    settings = Settings(topic_prefix="idem", topic_partitions=2)
    ensure_ctr_topics(broker.bootstrap, settings)
    ensure_ctr_topics(broker.bootstrap, settings)
    consumer = make_consumer(broker.bootstrap)
    try:
        for name in ("idem.impressions", "idem.clicks", "idem.deadletter"):
            assert len(partitions_for(consumer, name)) == 2
    finally:
        consumer.close()


def test_embedded_broker_binds_loopback_and_stops() -> None:
    broker = EmbeddedBroker().start()
    assert broker.bootstrap.startswith("127.0.0.1:")
    broker.stop()
    import socket

    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", broker.port)) != 0
