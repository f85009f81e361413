"""Ingest test helpers: reading a whole topic back, bounded by its high-water marks."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from kafka.consumer.fetcher import ConsumerRecord

from pipelines.kafka import high_watermarks, make_consumer, partitions_for

# The tests' topics read back in seconds: a read that has not reached the high-water marks in a minute
# is stuck, and fails instead of hanging the test run.
READ_TIMEOUT_S = 60


def _read_topic(bootstrap: str, topic: str) -> list[ConsumerRecord]:
    """Every record of a topic, partition by partition in offset order."""
    consumer = make_consumer(bootstrap)
    try:
        parts = partitions_for(consumer, topic)
        marks = high_watermarks(consumer, parts)
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + READ_TIMEOUT_S
        while any(consumer.position(tp) < marks[tp] for tp in parts):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{topic}: read {len(records)} records, not up to {marks} in {READ_TIMEOUT_S} s"
                )
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()


@pytest.fixture
def read_topic() -> Callable[[str, str], list[ConsumerRecord]]:
    return _read_topic
