"""Reading Kafka from Python: an offset-range planner and a reader for exactly one range.

Beam's ReadFromKafka is a Java cross-language transform; ctrflow plans bounded offset ranges per
partition on the driver (from the committed checkpoint up to the high-water mark) and reads each range
with kafka-python (assign + seek) inside a DoFn, so the same plan is replayable and idempotent.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import apache_beam as beam
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient

from pipelines.beam.state import RecordFingerprint
from pipelines.kafka import high_watermarks, make_consumer, partitions_for

# A broker without topic ids reports the all-zero UUID.
_NO_TOPIC_ID = "00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True, order=True)
class OffsetRange:
    """Offsets ``[start, end)`` of one topic partition."""

    topic: str
    partition: int
    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"bad offset range {self}")

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class RawBatch:
    """The records of one offset range, as read (values are the raw bytes, unparsed)."""

    source: str
    partition: int
    start: int
    end: int
    offsets: list[int] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)


TopicPartitionOffsets = Mapping[tuple[str, int], int]


def plan_batch(
    committed: TopicPartitionOffsets,
    highwater: TopicPartitionOffsets,
    max_records_per_partition: int,
    piece_size: int,
) -> list[OffsetRange]:
    """The next micro-batch: from each committed offset up to the high-water mark, capped per partition,
    split into pieces of at most ``piece_size`` records (the unit of parallel reading)."""
    if max_records_per_partition < 1 or piece_size < 1:
        raise ValueError("max_records_per_partition and piece_size must be >= 1")
    pieces = []
    for (topic, partition), hw in sorted(highwater.items()):
        start = committed.get((topic, partition), 0)
        if start > hw:
            raise ValueError(
                f"checkpoint offset {start} of {topic}[{partition}] is beyond its high-water mark {hw}: "
                "the topic was recreated; rebuild with `ctrflow features build --from-kafka --reset`"
            )
        end = min(hw, start + max_records_per_partition)
        for lo in range(start, end, piece_size):
            pieces.append(OffsetRange(topic, partition, lo, min(end, lo + piece_size)))
    return pieces


def current_highwater(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], int]:
    """High-water mark of every partition of ``topics`` (from a real fetch; see pipelines.kafka)."""
    consumer = make_consumer(bootstrap)
    try:
        parts = [tp for t in topics for tp in partitions_for(consumer, t)]
        return {(tp.topic, tp.partition): hw for tp, hw in high_watermarks(consumer, parts).items()}
    finally:
        consumer.close()


def log_identity(bootstrap: str, topics: list[str]) -> tuple[str | None, dict[str, str | None]]:
    """(cluster id, topic id per topic) as the broker reports them; None where it reports none."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="ctrflow-admin")
    try:
        cluster = admin.describe_cluster().get("cluster_id") or None
        ids: dict[str, str | None] = {t: None for t in topics}
        for topic in admin.describe_topics(topics):
            tid = topic.get("topic_id")
            if topic.get("name") in ids and tid and str(tid) != _NO_TOPIC_ID:
                ids[topic["name"]] = str(tid)
        return cluster, ids
    finally:
        admin.close()


def record_fingerprints(
    bootstrap: str, offsets: Mapping[tuple[str, int], int], timeout_s: float = 10.0
) -> dict[tuple[str, int], RecordFingerprint | None]:
    """The fingerprint of the record just before each offset (None for offset 0, or when the log no
    longer holds that record, e.g. after retention or compaction: there is nothing to compare)."""
    out: dict[tuple[str, int], RecordFingerprint | None] = {}
    consumer = make_consumer(bootstrap, client_id="ctrflow-fingerprint", max_poll_records=1)
    try:
        for (topic, partition), offset in sorted(offsets.items()):
            out[(topic, partition)] = None
            if offset <= 0:
                continue
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            if consumer.beginning_offsets([tp]).get(tp, 0) > offset - 1:
                continue  # retention moved the log start past it
            consumer.seek(tp, offset - 1)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                records = consumer.poll(timeout_ms=200, max_records=1).get(tp)
                if records:
                    r = records[0]
                    if r.offset == offset - 1:
                        out[(topic, partition)] = RecordFingerprint(
                            r.key.hex() if r.key is not None else None, int(r.timestamp), r.offset
                        )
                    break
                if consumer.position(tp) >= offset:
                    break  # an offset gap (compaction): no record there
    finally:
        consumer.close()
    return out


def read_range(consumer: KafkaConsumer, rng: OffsetRange, timeout_s: float = 60.0) -> RawBatch:
    """Exactly the records with offsets in ``[start, end)`` of one partition."""
    batch = RawBatch(rng.topic, rng.partition, rng.start, rng.end)
    if rng.size == 0:
        return batch
    tp = TopicPartition(rng.topic, rng.partition)
    consumer.assign([tp])
    consumer.seek(tp, rng.start)
    deadline = time.monotonic() + timeout_s
    position = rng.start
    while position < rng.end:
        if time.monotonic() > deadline:
            raise TimeoutError(f"reading {rng} stalled at offset {position}")
        for records in consumer.poll(timeout_ms=500, max_records=rng.end - position).values():
            for record in records:
                if record.offset >= rng.end:
                    break
                if record.offset >= rng.start:
                    batch.offsets.append(record.offset)
                    batch.values.append(record.value)
                position = record.offset + 1
        # Compacted or transactional topics can have offset gaps; the consumer's position covers them.
        position = max(position, consumer.position(tp))
    return batch


class ReadOffsetRange(beam.DoFn):
    """DoFn: OffsetRange -> RawBatch, one kafka-python consumer per DoFn instance."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._consumer: KafkaConsumer | None = None

    def setup(self) -> None:
        self._consumer = make_consumer(self.bootstrap, client_id="ctrflow-features")

    def process(self, rng: OffsetRange) -> Iterator[RawBatch]:
        assert self._consumer is not None
        yield read_range(self._consumer, rng)

    def teardown(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
